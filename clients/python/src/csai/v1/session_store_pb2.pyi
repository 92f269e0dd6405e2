import datetime

from csai.v1 import message_pb2 as _message_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StateUpdateMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATE_UPDATE_MODE_UNSPECIFIED: _ClassVar[StateUpdateMode]
    STATE_UPDATE_MODE_REPLACE: _ClassVar[StateUpdateMode]
    STATE_UPDATE_MODE_MERGE: _ClassVar[StateUpdateMode]

class ExistingSessions(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXISTING_SESSIONS_UNSPECIFIED: _ClassVar[ExistingSessions]
    EXISTING_SESSIONS_SKIP: _ClassVar[ExistingSessions]
    EXISTING_SESSIONS_OVERWRITE: _ClassVar[ExistingSessions]
    EXISTING_SESSIONS_FAIL: _ClassVar[ExistingSessions]

class SessionChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_CHANGE_KIND_UNSPECIFIED: _ClassVar[SessionChangeKind]
    SESSION_CHANGE_KIND_CREATED: _ClassVar[SessionChangeKind]
    SESSION_CHANGE_KIND_APPENDED: _ClassVar[SessionChangeKind]
    SESSION_CHANGE_KIND_REPLACED: _ClassVar[SessionChangeKind]
    SESSION_CHANGE_KIND_SYSTEM_MESSAGES: _ClassVar[SessionChangeKind]
    SESSION_CHANGE_KIND_STATE: _ClassVar[SessionChangeKind]
    SESSION_CHANGE_KIND_TOUCHED: _ClassVar[SessionChangeKind]
    SESSION_CHANGE_KIND_DELETED: _ClassVar[SessionChangeKind]
    SESSION_CHANGE_KIND_EXPIRED: _ClassVar[SessionChangeKind]
    SESSION_CHANGE_KIND_CHANGED: _ClassVar[SessionChangeKind]
    SESSION_CHANGE_KIND_CAUGHT_UP: _ClassVar[SessionChangeKind]
    SESSION_CHANGE_KIND_FELL_BEHIND: _ClassVar[SessionChangeKind]
STATE_UPDATE_MODE_UNSPECIFIED: StateUpdateMode
STATE_UPDATE_MODE_REPLACE: StateUpdateMode
STATE_UPDATE_MODE_MERGE: StateUpdateMode
EXISTING_SESSIONS_UNSPECIFIED: ExistingSessions
EXISTING_SESSIONS_SKIP: ExistingSessions
EXISTING_SESSIONS_OVERWRITE: ExistingSessions
EXISTING_SESSIONS_FAIL: ExistingSessions
SESSION_CHANGE_KIND_UNSPECIFIED: SessionChangeKind
SESSION_CHANGE_KIND_CREATED: SessionChangeKind
SESSION_CHANGE_KIND_APPENDED: SessionChangeKind
SESSION_CHANGE_KIND_REPLACED: SessionChangeKind
SESSION_CHANGE_KIND_SYSTEM_MESSAGES: SessionChangeKind
SESSION_CHANGE_KIND_STATE: SessionChangeKind
SESSION_CHANGE_KIND_TOUCHED: SessionChangeKind
SESSION_CHANGE_KIND_DELETED: SessionChangeKind
SESSION_CHANGE_KIND_EXPIRED: SessionChangeKind
SESSION_CHANGE_KIND_CHANGED: SessionChangeKind
SESSION_CHANGE_KIND_CAUGHT_UP: SessionChangeKind
SESSION_CHANGE_KIND_FELL_BEHIND: SessionChangeKind

class Session(_message.Message):
    __slots__ = ("session_id", "messages", "system_messages", "state", "version", "message_count", "create_time", "update_time", "expire_time")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    system_messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    state: _struct_pb2.Struct
    version: int
    message_count: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ..., system_messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ..., state: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., version: _Optional[int] = ..., message_count: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id", "last_n", "after_seq", "max_tokens", "count_system_messages", "model", "include_usage")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_N_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COUNT_SYSTEM_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_USAGE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    last_n: int
    after_seq: int
    max_tokens: int
    count_system_messages: bool
    model: str
    include_usage: bool
    def __init__(self, session_id: _Optional[str] = ..., last_n: _Optional[int] = ..., after_seq: _Optional[int] = ..., max_tokens: _Optional[int] = ..., count_system_messages: _Optional[bool] = ..., model: _Optional[str] = ..., include_usage: _Optional[bool] = ...) -> None: ...

class GetSessionResponse(_message.Message):
    __slots__ = ("session", "tokens", "summary", "usage_total")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    USAGE_TOTAL_FIELD_NUMBER: _ClassVar[int]
    session: Session
    tokens: int
    summary: WindowSummary
    usage_total: _message_pb2.UsageTotal
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., tokens: _Optional[int] = ..., summary: _Optional[_Union[WindowSummary, _Mapping]] = ..., usage_total: _Optional[_Union[_message_pb2.UsageTotal, _Mapping]] = ...) -> None: ...

class WindowSummary(_message.Message):
    __slots__ = ("text", "through_seq", "tokens")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    THROUGH_SEQ_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    text: str
    through_seq: int
    tokens: int
    def __init__(self, text: _Optional[str] = ..., through_seq: _Optional[int] = ..., tokens: _Optional[int] = ...) -> None: ...

class AppendMessagesRequest(_message.Message):
    __slots__ = ("session_id", "messages", "expected_version", "request_id", "ttl")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    expected_version: int
    request_id: str
    ttl: _duration_pb2.Duration
    def __init__(self, session_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ..., expected_version: _Optional[int] = ..., request_id: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AppendMessagesResponse(_message.Message):
    __slots__ = ("seqs", "version", "expire_time", "deduplicated")
    SEQS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    seqs: _containers.RepeatedScalarFieldContainer[int]
    version: int
    expire_time: _timestamp_pb2.Timestamp
    deduplicated: bool
    def __init__(self, seqs: _Optional[_Iterable[int]] = ..., version: _Optional[int] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deduplicated: _Optional[bool] = ...) -> None: ...

class ReplaceMessagesRequest(_message.Message):
    __slots__ = ("session_id", "messages", "expected_version", "ttl")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    expected_version: int
    ttl: _duration_pb2.Duration
    def __init__(self, session_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ..., expected_version: _Optional[int] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SetSystemMessagesRequest(_message.Message):
    __slots__ = ("session_id", "system_messages", "expected_version", "ttl")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    system_messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    expected_version: int
    ttl: _duration_pb2.Duration
    def __init__(self, session_id: _Optional[str] = ..., system_messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ..., expected_version: _Optional[int] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("version", "expire_time")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    version: int
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[int] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UpdateStateRequest(_message.Message):
    __slots__ = ("session_id", "state", "mode", "expected_version", "ttl")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    state: _struct_pb2.Struct
    mode: StateUpdateMode
    expected_version: int
    ttl: _duration_pb2.Duration
    def __init__(self, session_id: _Optional[str] = ..., state: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., mode: _Optional[_Union[StateUpdateMode, str]] = ..., expected_version: _Optional[int] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class UpdateStateResponse(_message.Message):
    __slots__ = ("version", "expire_time", "state")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    version: int
    expire_time: _timestamp_pb2.Timestamp
    state: _struct_pb2.Struct
    def __init__(self, version: _Optional[int] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class TouchSessionRequest(_message.Message):
    __slots__ = ("session_id", "ttl")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    ttl: _duration_pb2.Duration
    def __init__(self, session_id: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TouchSessionResponse(_message.Message):
    __slots__ = ("version", "expire_time")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    version: int
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[int] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DeleteSessionRequest(_message.Message):
    __slots__ = ("session_id", "expected_version")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    expected_version: int
    def __init__(self, session_id: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class DeleteSessionResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "id_prefix")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ID_PREFIX_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    id_prefix: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., id_prefix: _Optional[str] = ...) -> None: ...

class SessionSummary(_message.Message):
    __slots__ = ("session_id", "message_count", "version", "update_time", "expire_time", "usage_total")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    USAGE_TOTAL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    message_count: int
    version: int
    update_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    usage_total: _message_pb2.UsageTotal
    def __init__(self, session_id: _Optional[str] = ..., message_count: _Optional[int] = ..., version: _Optional[int] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., usage_total: _Optional[_Union[_message_pb2.UsageTotal, _Mapping]] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions", "next_page_token")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[SessionSummary]
    next_page_token: str
    def __init__(self, sessions: _Optional[_Iterable[_Union[SessionSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("backend", "active_sessions", "total_messages", "approximate_bytes", "learning_records", "security_logs", "usage_total")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    APPROXIMATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RECORDS_FIELD_NUMBER: _ClassVar[int]
    SECURITY_LOGS_FIELD_NUMBER: _ClassVar[int]
    USAGE_TOTAL_FIELD_NUMBER: _ClassVar[int]
    backend: str
    active_sessions: int
    total_messages: int
    approximate_bytes: int
    learning_records: int
    security_logs: int
    usage_total: _message_pb2.UsageTotal
    def __init__(self, backend: _Optional[str] = ..., active_sessions: _Optional[int] = ..., total_messages: _Optional[int] = ..., approximate_bytes: _Optional[int] = ..., learning_records: _Optional[int] = ..., security_logs: _Optional[int] = ..., usage_total: _Optional[_Union[_message_pb2.UsageTotal, _Mapping]] = ...) -> None: ...

class LearningRecord(_message.Message):
    __slots__ = ("id", "session_id", "message_seq", "query", "response", "tools", "context", "feedback_score", "participant", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_SEQ_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_SCORE_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    session_id: str
    message_seq: int
    query: str
    response: str
    tools: _containers.RepeatedScalarFieldContainer[str]
    context: _struct_pb2.Struct
    feedback_score: float
    participant: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., session_id: _Optional[str] = ..., message_seq: _Optional[int] = ..., query: _Optional[str] = ..., response: _Optional[str] = ..., tools: _Optional[_Iterable[str]] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., feedback_score: _Optional[float] = ..., participant: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordFeedbackRequest(_message.Message):
    __slots__ = ("session_id", "message_seq", "query", "response", "tools", "context", "feedback_score", "participant", "create_time")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_SEQ_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_SCORE_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    message_seq: int
    query: str
    response: str
    tools: _containers.RepeatedScalarFieldContainer[str]
    context: _struct_pb2.Struct
    feedback_score: float
    participant: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, session_id: _Optional[str] = ..., message_seq: _Optional[int] = ..., query: _Optional[str] = ..., response: _Optional[str] = ..., tools: _Optional[_Iterable[str]] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., feedback_score: _Optional[float] = ..., participant: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TimeRange(_message.Message):
    __slots__ = ("start_time", "end_time", "days")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    DAYS_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    days: int
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., days: _Optional[int] = ...) -> None: ...

class ListLearningDataRequest(_message.Message):
    __slots__ = ("range", "page_size", "page_token")
    RANGE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    range: TimeRange
    page_size: int
    page_token: str
    def __init__(self, range: _Optional[_Union[TimeRange, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListLearningDataResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[LearningRecord]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[LearningRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SecurityLog(_message.Message):
    __slots__ = ("id", "user_id", "session_id", "message_hash", "spam_score", "allowed", "reason", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_HASH_FIELD_NUMBER: _ClassVar[int]
    SPAM_SCORE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    user_id: str
    session_id: str
    message_hash: str
    spam_score: float
    allowed: bool
    reason: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., message_hash: _Optional[str] = ..., spam_score: _Optional[float] = ..., allowed: _Optional[bool] = ..., reason: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordSecurityLogRequest(_message.Message):
    __slots__ = ("user_id", "session_id", "message", "message_hash", "spam_score", "allowed", "reason", "create_time")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_HASH_FIELD_NUMBER: _ClassVar[int]
    SPAM_SCORE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    session_id: str
    message: str
    message_hash: str
    spam_score: float
    allowed: bool
    reason: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., message: _Optional[str] = ..., message_hash: _Optional[str] = ..., spam_score: _Optional[float] = ..., allowed: _Optional[bool] = ..., reason: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListSecurityLogsRequest(_message.Message):
    __slots__ = ("user_id", "range", "page_size", "page_token")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    range: TimeRange
    page_size: int
    page_token: str
    def __init__(self, user_id: _Optional[str] = ..., range: _Optional[_Union[TimeRange, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSecurityLogsResponse(_message.Message):
    __slots__ = ("logs", "next_page_token")
    LOGS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    logs: _containers.RepeatedCompositeFieldContainer[SecurityLog]
    next_page_token: str
    def __init__(self, logs: _Optional[_Iterable[_Union[SecurityLog, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ExportSessionsRequest(_message.Message):
    __slots__ = ("id_prefix",)
    ID_PREFIX_FIELD_NUMBER: _ClassVar[int]
    id_prefix: str
    def __init__(self, id_prefix: _Optional[str] = ...) -> None: ...

class ExportedSession(_message.Message):
    __slots__ = ("session", "remaining_ttl")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    REMAINING_TTL_FIELD_NUMBER: _ClassVar[int]
    session: Session
    remaining_ttl: _duration_pb2.Duration
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., remaining_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ImportSessionsRequest(_message.Message):
    __slots__ = ("session", "existing")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    session: ExportedSession
    existing: ExistingSessions
    def __init__(self, session: _Optional[_Union[ExportedSession, _Mapping]] = ..., existing: _Optional[_Union[ExistingSessions, str]] = ...) -> None: ...

class ImportOutcome(_message.Message):
    __slots__ = ("session_id", "result", "error")
    class Result(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        RESULT_UNSPECIFIED: _ClassVar[ImportOutcome.Result]
        RESULT_IMPORTED: _ClassVar[ImportOutcome.Result]
        RESULT_SKIPPED: _ClassVar[ImportOutcome.Result]
        RESULT_FAILED: _ClassVar[ImportOutcome.Result]
    RESULT_UNSPECIFIED: ImportOutcome.Result
    RESULT_IMPORTED: ImportOutcome.Result
    RESULT_SKIPPED: ImportOutcome.Result
    RESULT_FAILED: ImportOutcome.Result
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    result: ImportOutcome.Result
    error: str
    def __init__(self, session_id: _Optional[str] = ..., result: _Optional[_Union[ImportOutcome.Result, str]] = ..., error: _Optional[str] = ...) -> None: ...

class ImportSessionsResponse(_message.Message):
    __slots__ = ("outcomes", "imported", "skipped", "failed")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    IMPORTED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[ImportOutcome]
    imported: int
    skipped: int
    failed: int
    def __init__(self, outcomes: _Optional[_Iterable[_Union[ImportOutcome, _Mapping]]] = ..., imported: _Optional[int] = ..., skipped: _Optional[int] = ..., failed: _Optional[int] = ...) -> None: ...

class WatchSessionRequest(_message.Message):
    __slots__ = ("session_id", "resume_token", "after_seq", "version")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    resume_token: str
    after_seq: int
    version: int
    def __init__(self, session_id: _Optional[str] = ..., resume_token: _Optional[str] = ..., after_seq: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class SessionEvent(_message.Message):
    __slots__ = ("version", "resume_token", "appended", "replaced", "system_messages", "state", "touched", "deleted", "expired", "caught_up", "expire_time")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    APPENDED_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOUCHED_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_UP_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    version: int
    resume_token: str
    appended: MessageList
    replaced: MessageList
    system_messages: MessageList
    state: _struct_pb2.Struct
    touched: bool
    deleted: bool
    expired: bool
    caught_up: bool
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[int] = ..., resume_token: _Optional[str] = ..., appended: _Optional[_Union[MessageList, _Mapping]] = ..., replaced: _Optional[_Union[MessageList, _Mapping]] = ..., system_messages: _Optional[_Union[MessageList, _Mapping]] = ..., state: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., touched: _Optional[bool] = ..., deleted: _Optional[bool] = ..., expired: _Optional[bool] = ..., caught_up: _Optional[bool] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class MessageList(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    def __init__(self, messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ...) -> None: ...

class WatchSessionsRequest(_message.Message):
    __slots__ = ("id_prefix", "resume_token")
    ID_PREFIX_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    id_prefix: str
    resume_token: str
    def __init__(self, id_prefix: _Optional[str] = ..., resume_token: _Optional[str] = ...) -> None: ...

class SessionSummaryEvent(_message.Message):
    __slots__ = ("kind", "session_id", "version", "message_count", "expire_time", "resume_token")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    kind: SessionChangeKind
    session_id: str
    version: int
    message_count: int
    expire_time: _timestamp_pb2.Timestamp
    resume_token: str
    def __init__(self, kind: _Optional[_Union[SessionChangeKind, str]] = ..., session_id: _Optional[str] = ..., version: _Optional[int] = ..., message_count: _Optional[int] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resume_token: _Optional[str] = ...) -> None: ...

"""The blocking client: `Sidecar`."""

import os
import queue
import time
from typing import Callable, Iterable, Iterator, Optional

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from csai.v1 import chat_pb2, chat_pb2_grpc, message_pb2, session_store_pb2
from csai.v1 import session_store_pb2_grpc

from . import requests
from .errors import error_from, retry_pause
from .requests import Tool

DEFAULT_TARGET = "127.0.0.1:50051"


def target_and_metadata(target: Optional[str], token: Optional[str]):
    """The address (argument, else CSAI_SIDECAR_ADDRESS, else 127.0.0.1:50051; host:port or
    unix:///path) and the bearer-token metadata (argument, else CSAI_SIDECAR_TOKEN)."""
    target = target or os.environ.get("CSAI_SIDECAR_ADDRESS") or DEFAULT_TARGET
    token = token or os.environ.get("CSAI_SIDECAR_TOKEN")
    return target, ([("authorization", f"Bearer {token}")] if token else [])


def channel_options(target: str) -> list:
    """Over a Unix socket gRPC's core names the socket path as the HTTP/2 :authority, which
    the sidecar's HTTP/2 server rejects as malformed (RST_STREAM): name localhost instead."""
    return [("grpc.default_authority", "localhost")] if target.startswith("unix:") else []


class Sidecar:
    """The sidecar at `target`: host:port or unix:///path (default: the
    CSAI_SIDECAR_ADDRESS variable the Kubernetes example sets, else 127.0.0.1:50051).

    With `token` (default: CSAI_SIDECAR_TOKEN) every call carries it as a bearer token.
    `timeout` is each call's deadline in seconds, retries included; `turn_timeout` that of
    a whole chat turn. Reads, health and appends that carry a `request_id` are retried
    up to `retries` times on UNAVAILABLE (jittered exponential backoff); an append without
    a `request_id` is not, since it might have been stored. Failed calls raise
    `SidecarError` or its `NotFound`, `Aborted`, `ResourceExhausted` (grpc.RpcError
    subclasses)."""

    def __init__(self, target: Optional[str] = None, token: Optional[str] = None,
                 timeout: float = 10.0, turn_timeout: float = 120.0, retries: int = 8):
        self.target, self.metadata = target_and_metadata(target, token)
        self.channel = grpc.insecure_channel(self.target, options=channel_options(self.target))
        self.sessions = session_store_pb2_grpc.SessionStoreStub(self.channel)
        self.chat = chat_pb2_grpc.ChatStub(self.channel)
        self.timeout = timeout
        self.turn_timeout = turn_timeout
        self.retries = retries
        # Attempts that failed with UNAVAILABLE and were retried, over the client's life.
        self.retried = 0

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Sidecar":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _call(self, method, request, retry: bool, metadata=None):
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            try:
                return method(request, timeout=max(deadline - time.monotonic(), 0.001),
                              metadata=self.metadata if metadata is None else metadata)
            except grpc.RpcError as error:
                attempt += 1
                pause = retry_pause(error, retry, attempt, self.retries,
                                    deadline - time.monotonic())
                if pause is None:
                    raise error_from(error) from None
                self.retried += 1
                time.sleep(pause)

    def append(self, session_id: str, *messages: message_pb2.Message,
               expected_version: Optional[int] = None, request_id: str = "",
               ttl_seconds: Optional[float] = None) -> session_store_pb2.AppendMessagesResponse:
        """Appends messages atomically. Raises `Aborted` when `expected_version` is not the
        session's version. With a `request_id` a retry (ours or yours) is stored once."""
        request = requests.append_request(session_id, messages, expected_version,
                                          request_id, ttl_seconds)
        return self._call(self.sessions.AppendMessages, request, retry=bool(request_id))

    def get(self, session_id: str, last_n: Optional[int] = None,
            missing_ok: bool = True) -> Optional[session_store_pb2.Session]:
        """The session (its last `last_n` messages when given); None if it does not exist,
        or `NotFound` raised when not `missing_ok`."""
        try:
            return self._call(self.sessions.GetSession,
                              requests.get_request(session_id, last_n), retry=True).session
        except grpc.RpcError as error:
            if missing_ok and error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def delete(self, session_id: str) -> bool:
        """Deletes the session; False when there was none."""
        request = session_store_pb2.DeleteSessionRequest(session_id=session_id)
        return self._call(self.sessions.DeleteSession, request, retry=True).deleted

    def health(self, service: str = "") -> str:
        """The serving status of `service`, e.g. "SERVING".

        "" is the sidecar process (SERVING until it shuts down); the csai services follow
        the storage backend.
        """
        stub = health_pb2_grpc.HealthStub(self.channel)
        response = self._call(stub.Check, health_pb2.HealthCheckRequest(service=service),
                              retry=True, metadata=[])
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def services(self) -> list:
        """The services the server offers, by server reflection."""
        stub = reflection_pb2_grpc.ServerReflectionStub(self.channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        try:
            for response in stub.ServerReflectionInfo(iter([request]), timeout=self.timeout,
                                                      metadata=self.metadata):
                return sorted(s.name for s in response.list_services_response.service)
        except grpc.RpcError as error:
            raise error_from(error) from None
        return []

    def watch(self, session_id: str, resume_token: str = "", after_seq: int = 0,
              version: int = 0) -> Iterator[session_store_pb2.SessionEvent]:
        """Yields the session's changes (`SessionEvent`): what the client does not have yet
        (after `after_seq` and `version`, e.g. from `get`, or after `resume_token`), a
        `caught_up` event, then every change as it happens, without end; `close()` the
        generator to stop. When the stream breaks (UNAVAILABLE: the sidecar restarting) it
        watches again from the last event's `resume_token`: no gap, no message twice."""
        request = session_store_pb2.WatchSessionRequest(
            session_id=session_id, resume_token=resume_token, after_seq=after_seq,
            version=version)
        return self._follow(self.sessions.WatchSession, request)

    def watch_sessions(self, id_prefix: str = "",
                       resume_token: str = "") -> Iterator[session_store_pb2.SessionSummaryEvent]:
        """Yields a summary of every change of the sessions under `id_prefix`
        (`SessionSummaryEvent`), without end. After a FELL_BEHIND event (the client read
        too slowly) or a broken stream it watches again from the last event's token, so
        the sessions changed meanwhile come as CHANGED events."""
        request = session_store_pb2.WatchSessionsRequest(id_prefix=id_prefix,
                                                         resume_token=resume_token)
        return self._follow(self.sessions.WatchSessions, request)

    def _follow(self, method, request):
        attempt = 0
        while True:
            call = method(request, metadata=self.metadata)
            fell_behind = False
            try:
                for event in call:
                    attempt = 0
                    request.resume_token = event.resume_token
                    fell_behind = getattr(event, "kind", 0) == \
                        session_store_pb2.SESSION_CHANGE_KIND_FELL_BEHIND
                    yield event
                return
            except grpc.RpcError as error:
                if fell_behind and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    continue
                attempt += 1
                pause = retry_pause(error, True, attempt, self.retries, float("inf"))
                if pause is None:
                    raise error_from(error) from None
                self.retried += 1
                time.sleep(pause)
            finally:
                call.cancel()

    def stream_turn(self, session_id: str, text: str, tools: Iterable[Tool] = (),
                    on_delta: Callable[[str], None] = lambda _text: None,
                    on_tool_call: Callable[[str, dict], None] = lambda _name, _args: None,
                    ) -> chat_pb2.ExecResponse:
        """Runs a whole chat turn over ExecStream, within `turn_timeout`: text reaches
        `on_delta` as the model writes it, and each tool call is answered by the tool's
        function (its JSON arguments as keyword arguments; its return value sent back as
        JSON; an exception it raises sent back as an error result the model sees)."""
        start, functions = requests.start_request(session_id, text, tools)
        outbox: "queue.Queue" = queue.Queue()
        outbox.put(start)
        # The request stream stays open until the turn is done: tool results go through it.
        responses = self.chat.ExecStream(iter(outbox.get, None), timeout=self.turn_timeout,
                                         metadata=self.metadata)
        try:
            for response in responses:
                kind = response.WhichOneof("kind")
                if kind == "delta":
                    on_delta(response.delta.content)
                elif kind == "tool_call":
                    call = response.tool_call
                    on_tool_call(call.function.name, requests.call_arguments(call))
                    outbox.put(requests.tool_result(call, requests.run_tool(functions, call)))
                elif kind == "done":
                    return response.done
            raise RuntimeError("ExecStream ended without a result")
        except grpc.RpcError as error:
            raise error_from(error) from None
        finally:
            outbox.put(None)

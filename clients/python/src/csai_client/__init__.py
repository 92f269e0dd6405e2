"""A thin helper over the generated csai.v1 stubs for the calls a bot makes most."""

import json
import os
import queue
from typing import Callable, Dict, Iterable, Optional, Tuple

import grpc
from google.protobuf import duration_pb2, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from csai.v1 import chat_pb2, chat_pb2_grpc, message_pb2, session_store_pb2
from csai.v1 import session_store_pb2_grpc

__all__ = ["Sidecar", "Tool", "assistant", "tool", "user"]

# A tool the bot offers: its declaration and the function that answers it.
Tool = Tuple[chat_pb2.Tool, Callable[..., object]]


def user(text: str) -> message_pb2.Message:
    """A user message."""
    return message_pb2.Message(role=message_pb2.ROLE_USER, content=text)


def assistant(text: str) -> message_pb2.Message:
    """An assistant message."""
    return message_pb2.Message(role=message_pb2.ROLE_ASSISTANT, content=text)


def tool(name: str, description: str, parameters: dict, function: Callable[..., object]) -> Tool:
    """Declares `function` as a tool; `parameters` is its JSON Schema."""
    schema = struct_pb2.Struct()
    schema.update(parameters)
    return chat_pb2.Tool(name=name, description=description, parameters=schema), function


class Sidecar:
    """The sidecar at `target` (host:port; default: the CSAI_SIDECAR_ADDRESS variable the
    Kubernetes example sets, else 127.0.0.1:50051). With `token` (default: the
    CSAI_SIDECAR_TOKEN variable), every call carries it as a bearer token; `timeout` is
    each call's deadline in seconds."""

    def __init__(self, target: Optional[str] = None, token: Optional[str] = None,
                 timeout: float = 10.0):
        target = target or os.environ.get("CSAI_SIDECAR_ADDRESS") or "127.0.0.1:50051"
        token = token or os.environ.get("CSAI_SIDECAR_TOKEN")
        self.channel = grpc.insecure_channel(target)
        self.sessions = session_store_pb2_grpc.SessionStoreStub(self.channel)
        self.chat = chat_pb2_grpc.ChatStub(self.channel)
        self.timeout = timeout
        self.metadata = [("authorization", f"Bearer {token}")] if token else []

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Sidecar":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def append(self, session_id: str, *messages: message_pb2.Message,
               expected_version: Optional[int] = None, request_id: str = "",
               ttl_seconds: Optional[int] = None) -> session_store_pb2.AppendMessagesResponse:
        """Appends messages atomically. Raises grpc.RpcError: ABORTED when
        `expected_version` is not the session's version."""
        request = session_store_pb2.AppendMessagesRequest(
            session_id=session_id, messages=messages, request_id=request_id)
        if expected_version is not None:
            request.expected_version = expected_version
        if ttl_seconds is not None:
            request.ttl.CopyFrom(duration_pb2.Duration(seconds=ttl_seconds))
        return self.sessions.AppendMessages(request, timeout=self.timeout, metadata=self.metadata)

    def get(self, session_id: str, last_n: Optional[int] = None) -> Optional[session_store_pb2.Session]:
        """The session (its last `last_n` messages when given), or None if it does not
        exist (NOT_FOUND)."""
        request = session_store_pb2.GetSessionRequest(session_id=session_id)
        if last_n is not None:
            request.last_n = last_n
        try:
            return self.sessions.GetSession(
                request, timeout=self.timeout, metadata=self.metadata).session
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def health(self, service: str = "") -> str:
        """The serving status of `service`, e.g. "SERVING".

        "" is the sidecar process (SERVING until it shuts down); the csai services follow
        the storage backend.
        """
        stub = health_pb2_grpc.HealthStub(self.channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def services(self) -> list:
        """The services the server offers, by server reflection."""
        stub = reflection_pb2_grpc.ServerReflectionStub(self.channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        for response in stub.ServerReflectionInfo(iter([request]), timeout=self.timeout):
            return sorted(s.name for s in response.list_services_response.service)
        return []

    def stream_turn(self, session_id: str, text: str, tools: Iterable[Tool] = (),
                    on_delta: Callable[[str], None] = lambda _text: None,
                    on_tool_call: Callable[[str, dict], None] = lambda _name, _args: None,
                    ) -> chat_pb2.ExecResponse:
        """Runs a whole chat turn over ExecStream: text reaches `on_delta` as the model
        writes it, and each tool call is answered by the tool's function (its JSON
        arguments as keyword arguments; its return value sent back as JSON)."""
        functions: Dict[str, Callable[..., object]] = {}
        declarations = []
        for declaration, function in tools:
            declarations.append(declaration)
            functions[declaration.name] = function
        outbox: "queue.Queue" = queue.Queue()
        outbox.put(chat_pb2.ExecStreamRequest(start=chat_pb2.ExecRequest(
            session_id=session_id,
            user_message=chat_pb2.UserMessage(content=text),
            tools=declarations,
        )))
        # The request stream stays open until the turn is done: tool results go through it.
        responses = self.chat.ExecStream(iter(outbox.get, None), metadata=self.metadata)
        try:
            for response in responses:
                kind = response.WhichOneof("kind")
                if kind == "delta":
                    on_delta(response.delta.content)
                elif kind == "tool_call":
                    call = response.tool_call
                    arguments = json.loads(call.function.arguments or "{}")
                    on_tool_call(call.function.name, arguments)
                    function = functions.get(call.function.name)
                    if function is None:
                        result, is_error = f"unknown tool {call.function.name}", True
                    else:
                        result, is_error = json.dumps(function(**arguments)), False
                    outbox.put(chat_pb2.ExecStreamRequest(tool_result=chat_pb2.ToolResult(
                        tool_call_id=call.id, content=result, is_error=is_error)))
                elif kind == "done":
                    return response.done
            raise RuntimeError("ExecStream ended without a result")
        finally:
            outbox.put(None)

"""The asyncio client: `AsyncSidecar`, the same calls as `Sidecar` on grpc.aio."""

import asyncio
from typing import Callable, Iterable, Optional

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from csai.v1 import chat_pb2, chat_pb2_grpc, message_pb2, session_store_pb2
from csai.v1 import session_store_pb2_grpc

from . import requests
from .errors import error_from, retry_pause
from .requests import Tool
from .sidecar import channel_options, target_and_metadata


class AsyncSidecar:
    """`Sidecar` for asyncio code: the same address, token, deadlines, retries and typed
    errors; tools may be coroutine functions. Use `async with AsyncSidecar() as sidecar`."""

    def __init__(self, target: Optional[str] = None, token: Optional[str] = None,
                 timeout: float = 10.0, turn_timeout: float = 120.0, retries: int = 8):
        self.target, self.metadata = target_and_metadata(target, token)
        self.channel = grpc.aio.insecure_channel(self.target,
                                                 options=channel_options(self.target))
        self.sessions = session_store_pb2_grpc.SessionStoreStub(self.channel)
        self.chat = chat_pb2_grpc.ChatStub(self.channel)
        self.timeout = timeout
        self.turn_timeout = turn_timeout
        self.retries = retries
        self.retried = 0

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> "AsyncSidecar":
        return self

    async def __aexit__(self, *_exc) -> None:
        await self.close()

    async def _call(self, method, request, retry: bool, metadata=None):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        attempt = 0
        while True:
            try:
                return await method(request, timeout=max(deadline - loop.time(), 0.001),
                                    metadata=self.metadata if metadata is None else metadata)
            except grpc.RpcError as error:
                attempt += 1
                pause = retry_pause(error, retry, attempt, self.retries, deadline - loop.time())
                if pause is None:
                    raise error_from(error) from None
                self.retried += 1
                await asyncio.sleep(pause)

    async def append(self, session_id: str, *messages: message_pb2.Message,
                     expected_version: Optional[int] = None, request_id: str = "",
                     ttl_seconds: Optional[float] = None) -> session_store_pb2.AppendMessagesResponse:
        """See `Sidecar.append`."""
        request = requests.append_request(session_id, messages, expected_version,
                                          request_id, ttl_seconds)
        return await self._call(self.sessions.AppendMessages, request, retry=bool(request_id))

    async def get(self, session_id: str, last_n: Optional[int] = None,
                  missing_ok: bool = True) -> Optional[session_store_pb2.Session]:
        """See `Sidecar.get`."""
        try:
            response = await self._call(self.sessions.GetSession,
                                        requests.get_request(session_id, last_n), retry=True)
            return response.session
        except grpc.RpcError as error:
            if missing_ok and error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    async def delete(self, session_id: str) -> bool:
        """See `Sidecar.delete`."""
        request = session_store_pb2.DeleteSessionRequest(session_id=session_id)
        return (await self._call(self.sessions.DeleteSession, request, retry=True)).deleted

    async def health(self, service: str = "") -> str:
        """See `Sidecar.health`."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        response = await self._call(stub.Check, health_pb2.HealthCheckRequest(service=service),
                                    retry=True, metadata=[])
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    async def stream_turn(self, session_id: str, text: str, tools: Iterable[Tool] = (),
                          on_delta: Callable[[str], None] = lambda _text: None,
                          on_tool_call: Callable[[str, dict], None] = lambda _name, _args: None,
                          ) -> chat_pb2.ExecResponse:
        """See `Sidecar.stream_turn`; a tool may be a coroutine function."""
        start, functions = requests.start_request(session_id, text, tools)
        call = self.chat.ExecStream(timeout=self.turn_timeout, metadata=self.metadata)
        try:
            await call.write(start)
            while True:
                response = await call.read()
                if response == grpc.aio.EOF:
                    raise RuntimeError("ExecStream ended without a result")
                kind = response.WhichOneof("kind")
                if kind == "delta":
                    on_delta(response.delta.content)
                elif kind == "tool_call":
                    tool_call = response.tool_call
                    on_tool_call(tool_call.function.name, requests.call_arguments(tool_call))
                    outcome = await requests.run_tool_async(functions, tool_call)
                    await call.write(requests.tool_result(tool_call, outcome))
                elif kind == "done":
                    await call.done_writing()
                    return response.done
        except grpc.RpcError as error:
            raise error_from(error) from None
        finally:
            call.cancel()

"""The requests and tool handling the sync and asyncio clients share."""

import inspect
import json
from typing import Callable, Dict, Iterable, Optional, Tuple

from google.protobuf import duration_pb2, struct_pb2

from csai.v1 import chat_pb2, message_pb2, session_store_pb2

# A tool the bot offers: its declaration and the function that answers it (a plain
# function, or a coroutine function with the asyncio client).
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


def append_request(session_id: str, messages, expected_version: Optional[int],
                   request_id: str, ttl_seconds: Optional[float]):
    request = session_store_pb2.AppendMessagesRequest(
        session_id=session_id, messages=messages, request_id=request_id)
    if expected_version is not None:
        request.expected_version = expected_version
    if ttl_seconds is not None:
        ttl = duration_pb2.Duration()
        ttl.FromMilliseconds(round(ttl_seconds * 1000))
        request.ttl.CopyFrom(ttl)
    return request


def get_request(session_id: str, last_n: Optional[int]):
    request = session_store_pb2.GetSessionRequest(session_id=session_id)
    if last_n is not None:
        request.last_n = last_n
    return request


def start_request(session_id: str, text: str, tools: Iterable[Tool]):
    """The ExecStream start of a turn, and the tools' functions by name."""
    functions: Dict[str, Callable[..., object]] = {}
    declarations = []
    for declaration, function in tools:
        declarations.append(declaration)
        functions[declaration.name] = function
    start = chat_pb2.ExecStreamRequest(start=chat_pb2.ExecRequest(
        session_id=session_id,
        user_message=chat_pb2.UserMessage(content=text),
        tools=declarations,
    ))
    return start, functions


def call_arguments(call) -> dict:
    return json.loads(call.function.arguments or "{}")


def tool_result(call, outcome) -> chat_pb2.ExecStreamRequest:
    """The result to send back: the function's return value as JSON, or, when it raised
    (or the tool is unknown), the error with `is_error` so the model can recover instead
    of the turn dying."""
    if isinstance(outcome, BaseException):
        content, is_error = f"{type(outcome).__name__}: {outcome}", True
    else:
        content, is_error = json.dumps(outcome), False
    return chat_pb2.ExecStreamRequest(tool_result=chat_pb2.ToolResult(
        tool_call_id=call.id, content=content, is_error=is_error))


def run_tool(functions, call):
    """Runs a sync tool; returns its value or the exception it raised."""
    function = functions.get(call.function.name)
    if function is None:
        return LookupError(f"unknown tool {call.function.name}")
    try:
        return function(**call_arguments(call))
    except Exception as error:  # the model hears about it; the turn goes on
        return error


async def run_tool_async(functions, call):
    """Runs a tool that may be a coroutine function; its value or the exception."""
    function = functions.get(call.function.name)
    if function is None:
        return LookupError(f"unknown tool {call.function.name}")
    try:
        value = function(**call_arguments(call))
        if inspect.isawaitable(value):
            value = await value
        return value
    except Exception as error:
        return error

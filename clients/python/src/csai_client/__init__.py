"""A thin helper over the generated csai.v1 stubs for the calls a bot makes most: a
blocking client (`Sidecar`) and an asyncio one (`AsyncSidecar`), with deadlines, retries
on UNAVAILABLE where they are safe, and typed errors."""

from .aio import AsyncSidecar
from .errors import Aborted, NotFound, ResourceExhausted, SidecarError
from .requests import Tool, assistant, tool, user
from .sidecar import Sidecar

__all__ = [
    "Aborted",
    "AsyncSidecar",
    "NotFound",
    "ResourceExhausted",
    "Sidecar",
    "SidecarError",
    "Tool",
    "assistant",
    "tool",
    "user",
]

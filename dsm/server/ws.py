"""WebSocket plumbing shared by the STT and TTS endpoints.

`SessionSocket` is aiohttp's WebSocketResponse that, when a client message exceeds the size limit, sends
an `Error` message before the close frame (1009) that aiohttp sends on its own. `Ending` describes why
the server ends a session: the `Error` text (None for a normal end), the close code and the metric kind.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from aiohttp import WSCloseCode, web

from dsm.server.protocol import error

__all__ = ["Ending", "SessionSocket"]


@dataclass(frozen=True)
class Ending:
    message: str | None
    code: int = WSCloseCode.OK
    kind: str | None = None  # errors-by-kind metric label; None for a normal end


class SessionSocket(web.WebSocketResponse):
    """A WebSocketResponse that reports oversized messages in-band before closing."""

    def __init__(self, *, max_msg_size: int, send_errors: bool = True, **kwargs):
        super().__init__(max_msg_size=max_msg_size, **kwargs)
        self.limit = max_msg_size
        self.send_errors = send_errors
        self.oversized = False

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and not self.closed and not self.oversized:
            self.oversized = True  # called by receive() when the reader rejected a message
            if self.send_errors:
                with contextlib.suppress(Exception):  # the peer may be gone already
                    await self.send_bytes(error(f"message too big (the limit is {self.limit} bytes)"))
            message = message or b"message too big"
        return await super().close(code=code, message=message, drain=drain)

"""ASGI guard in front of the web app: refuses oversized bodies and unexpected Host headers, adds safety headers.

The body limit is enforced while the body streams in (Content-Length first, then a running count
of the received bytes), so an oversized upload is refused before it is read into memory or onto disk.
"""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from fastapi import HTTPException

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The page loads nothing from elsewhere; no other site may frame it; browsers must not guess content types.
SAFETY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


def host_name(header: str) -> str:
    """The host part of a Host header, without its port ("[::1]:80" -> "[::1]", "a:80" -> "a")."""
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def too_large_message(limit: int) -> str:
    """The one line that says an upload went over the limit."""
    return f"upload too large: the limit is {limit / 2**20:g} MiB (kpr serve --max-upload-mb)"


class RequestGuard:
    """Answers 413 for bodies over ``max_body_bytes`` and 400 for Host headers outside ``allowed_hosts``.

    ``allowed_hosts`` (None: any) stops DNS-rebinding pages from talking to a loopback-only server.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, allowed_hosts: Collection[str] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host, length = headers.get("host", ""), headers.get("content-length")
        if self.allowed_hosts is not None and host_name(host).lower() not in self.allowed_hosts:
            await _reply(send, 400, f"unexpected Host header {host!r}: open the app by its loopback address")
        elif length is not None and not length.isdigit():
            await _reply(send, 400, f"bad Content-Length header {length!r}")
        elif length is not None and int(length) > self.max_body_bytes:
            await _reply(send, 413, too_large_message(self.max_body_bytes))
        else:
            await self.app(scope, self._counting(receive), _with_safety_headers(send))

    def _counting(self, receive: Receive) -> Receive:
        """``receive`` that raises a 413 HTTPException once more than the limit has arrived (chunked bodies)."""
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, too_large_message(self.max_body_bytes))
            return message

        return counted


def _with_safety_headers(send: Send) -> Send:
    """``send`` that adds SAFETY_HEADERS to the response start."""
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *SAFETY_HEADERS]}
        await send(message)

    return sending


async def _reply(send: Send, status: int, error: str) -> None:
    """Send a complete JSON ``{"error": ...}`` response straight from the guard."""
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *SAFETY_HEADERS]})
    await send({"type": "http.response.body", "body": body})

"""ASGI guard in front of the web app: refuses oversized bodies, unexpected Host headers and API requests without the
server's token, adds safety headers, and logs every request.

The body limit is enforced while the body streams in (Content-Length first, then a running count
of the received bytes), so an oversized upload is refused before it is read into memory or onto disk.
"""
from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs

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
TOKEN_COOKIE = "kpr_token"
TOKEN_HEADER = "x-kpr-token"
CASE_HEADER = "x-kpr-case"
log = logging.getLogger("kpr.serve")


def host_name(header: str) -> str:
    """The host part of a Host header, without its port ("[::1]:80" -> "[::1]", "a:80" -> "a")."""
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def too_large_message(limit: int) -> str:
    """The one line that says an upload went over the limit."""
    return f"upload too large: the limit is {limit / 2**20:g} MiB (kpr serve --max-upload-mb)"


class RequestGuard:
    """Answers 413 for bodies over ``max_body_bytes``, 400 for Host headers outside ``allowed_hosts`` and 401 for API
    requests without ``token``; logs each request (method, path, status, milliseconds and the case it names).

    ``allowed_hosts`` (None: any) stops DNS-rebinding pages from talking to a loopback-only server. With ``token``
    (None: none needed) an API request must carry it in the X-KPR-Token header or the cookie that a first visit to
    ``/?token=...`` sets (the page's own requests then carry it without showing it again).
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, allowed_hosts: Collection[str] | None = None,
                 token: str | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [0]

        async def recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            await self._guarded(scope, headers, receive, recording)
        finally:
            case = _case_named(scope, headers)
            log.info("%s %s %d %.0f ms%s", scope.get("method", "-"), scope.get("path", "-"), status[0],
                     1000 * (time.perf_counter() - started), "" if case is None else f" case={case}")

    async def _guarded(self, scope: Scope, headers: dict[str, str], receive: Receive, send: Send) -> None:
        """Refuse what must be refused (see the class), let the app answer the rest."""
        host, length = headers.get("host", ""), headers.get("content-length")
        path = scope.get("path", "")
        offered = _query(scope).get("token", [None])[0]
        if self.allowed_hosts is not None and host_name(host).lower() not in self.allowed_hosts:
            await _reply(send, 400, f"unexpected Host header {host!r}: open the app by its loopback address")
        elif self.token is not None and path == "/" and offered is not None:
            await self._welcome(send, offered)
        elif self.token is not None and path.startswith("/api/") and not self._carries_token(headers):
            await _reply(send, 401, "this server needs its token: open the page as /?token=TOKEN "
                                    "or send it in the X-KPR-Token header")
        elif length is not None and not length.isdigit():
            await _reply(send, 400, f"bad Content-Length header {length!r}")
        elif length is not None and int(length) > self.max_body_bytes:
            await _reply(send, 413, too_large_message(self.max_body_bytes))
        else:
            await self.app(scope, self._counting(receive), _with_safety_headers(send))

    def _matches(self, offered: str | None) -> bool:
        """Whether ``offered`` is the token (compared in constant time)."""
        return offered is not None and hmac.compare_digest(offered.encode(), self.token.encode())

    def _carries_token(self, headers: dict[str, str]) -> bool:
        """Whether the request carries the token in its header or cookie."""
        try:
            cookie = SimpleCookie(headers.get("cookie", "")).get(TOKEN_COOKIE)
        except CookieError:
            cookie = None
        return self._matches(headers.get(TOKEN_HEADER)) or self._matches(None if cookie is None else cookie.value)

    async def _welcome(self, send: Send, offered: str) -> None:
        """A first visit with ``?token=``: the right token sets the cookie and reloads the page without it in the URL."""
        if not self._matches(offered):
            await _reply(send, 401, "wrong token")
            return
        cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1")
        await send({"type": "http.response.start", "status": 303,
                    "headers": [(b"location", b"/"), (b"set-cookie", cookie), (b"content-length", b"0"),
                                *SAFETY_HEADERS]})
        await send({"type": "http.response.body", "body": b""})

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


def _query(scope: Scope) -> dict[str, list[str]]:
    """The request's query parameters."""
    return parse_qs(scope.get("query_string", b"").decode("latin-1"))


def _case_named(scope: Scope, headers: dict[str, str]) -> str | None:
    """The case a request names (its ``case`` query parameter or X-KPR-Case header), for the request log."""
    named = _query(scope).get("case", [None])[0] or headers.get(CASE_HEADER)
    return " ".join(named.split())[:100] or None if named else None


async def _reply(send: Send, status: int, error: str) -> None:
    """Send a complete JSON ``{"error": ...}`` response straight from the guard."""
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *SAFETY_HEADERS]})
    await send({"type": "http.response.body", "body": body})

"""Security headers on every answer: a browser never sniffs a type, frames a page or leaks the URL
in a Referer, and each HTML page names exactly what it may load (Content-Security-Policy).

| path | Content-Security-Policy |
|---|---|
| `/dashboard` | its own script, style, fetches and images (`'self'`); it has no inline script or style |
| `/docs` | Swagger UI from its CDN (as FastAPI serves it) and the page's one inline script, by hash |
| anything else (JSON) | nothing at all: `default-src 'none'` |
"""

from __future__ import annotations

import base64
import hashlib
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

COMMON = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
API_POLICY = b"default-src 'none'; frame-ancestors 'none'"
DASHBOARD_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SWAGGER_CDN = b"https://cdn.jsdelivr.net"
FASTAPI_FAVICON = b"https://fastapi.tiangolo.com"
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def docs_policy(html: bytes) -> bytes:
    """The Swagger UI page's policy: its CDN assets, and its inline scripts by their SHA-256 (read
    from the page itself, so the hash always matches what FastAPI rendered)."""
    hashes = b" ".join(
        b"'sha256-" + base64.b64encode(hashlib.sha256(script).digest()) + b"'"
        for script in _INLINE_SCRIPT.findall(html)
    )
    return (
        b"default-src 'none'; script-src " + SWAGGER_CDN + b" " + hashes + b"; style-src " + SWAGGER_CDN + b"; "
        b"img-src 'self' data: " + FASTAPI_FAVICON + b"; connect-src 'self'; "
        b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


class SecurityHeadersMiddleware:
    """Pure ASGI: adds the headers to the response start; only the docs page (a few kB) is held
    until its body is known, to hash its inline script."""

    def __init__(self, app: ASGIApp, docs_path: str = "/docs") -> None:
        self.app = app
        self.docs_path = docs_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == self.docs_path:
            await self._docs(scope, receive, send)
            return
        policy = DASHBOARD_POLICY if path.startswith("/dashboard") else API_POLICY
        extra = [*COMMON, (b"content-security-policy", policy)]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _docs(self, scope: Scope, receive: Receive, send: Send) -> None:
        start: Message | None = None
        body = bytearray()

        async def hold_until_complete(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body", False):
                return
            policy = docs_policy(bytes(body))
            start["headers"] = [*start.get("headers", ()), *COMMON, (b"content-security-policy", policy)]
            await send(start)
            await send({"type": "http.response.body", "body": bytes(body)})

        await self.app(scope, receive, hold_until_complete)

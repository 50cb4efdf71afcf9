"""Size limits on what a client sends, enforced as the bytes arrive (never after reading it all).

A JSON body may be at most RECON_API_MAX_BODY_BYTES, a multipart upload at most
RECON_API_MAX_UPLOAD_BYTES; a larger one is refused with a 413 problem naming the limit and its
setting: at the first read when its Content-Length says so, else as soon as the count passes it.
"""

from __future__ import annotations

from starlette.types import Message, Receive, Scope, Send

from recon import settings
from recon.web.api.http_middleware import HttpMiddleware
from recon.web.api.problems import BODY_TOO_LARGE, UPLOAD_TOO_LARGE, Problem


class BodyTooLarge(Problem):
    """Raised while the body is read; the app's problem handler answers it."""


def body_limit(scope: Scope) -> tuple[int, BodyTooLarge]:
    """This request's limit in bytes, and the problem a larger body is."""
    content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
    if content_type.lower().startswith(b"multipart/"):
        limit = settings.api_max_upload_bytes()
        return limit, BodyTooLarge(UPLOAD_TOO_LARGE, f"an upload may be at most {limit:,} bytes"
                                   " (RECON_API_MAX_UPLOAD_BYTES)", field="file")
    limit = settings.api_max_body_bytes()
    return limit, BodyTooLarge(BODY_TOO_LARGE, f"a request body may be at most {limit:,} bytes"
                               " (RECON_API_MAX_BODY_BYTES)", field="body")


class BodyLimitMiddleware(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit, too_large = body_limit(scope)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        received = int(declared) if declared.isdigit() else 0  # a declared size counts from the start

        async def counting_receive() -> Message:
            nonlocal received
            if received > limit:
                raise too_large
            message = await receive()
            if message["type"] == "http.request" and not declared.isdigit():
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large
            return message

        await self.app(scope, counting_receive, send)

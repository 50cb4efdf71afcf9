"""A request id on every API request and answer (``X-Request-ID``), for a producer's logs and ours.

A client's own id (1 to 128 visible ASCII characters) is kept, so one id follows a request across
systems; anything else is replaced by a fresh one. Problems carry it in their body too.
"""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import Message, Receive, Scope, Send

from recon.web.api.http_middleware import HttpMiddleware

HEADER = "X-Request-ID"
_USABLE = re.compile(r"[\x21-\x7e]{1,128}")


class RequestIdMiddleware(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = given if _USABLE.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)

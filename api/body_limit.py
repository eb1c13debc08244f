"""An ASGI middleware that refuses request bodies over a byte limit with 413, buffering no more than the limit."""

from __future__ import annotations

import json


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, never buffering more than the limit.

    The declared Content-Length is checked first; a chunked body is counted as it
    streams in and cut off at the limit. Before answering, up to ``drain`` further
    bytes are read and dropped: a client still sending when the answer comes would
    otherwise see a reset connection instead of the 413. Beyond that the
    connection is simply closed.
    """

    def __init__(self, app, limit: int, drain: int = 32 * 1024 * 1024) -> None:  # noqa: ANN001 - ASGI app
        self.app, self.limit, self.drain = app, limit, drain

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            if int(declared) <= self.limit + self.drain:
                await self._discard(receive, self.limit + self.drain)
            await self._refuse(send)
            return
        seen = 0
        exceeded = started = refused = False

        async def limited_receive():  # noqa: ANN202
            nonlocal seen, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    exceeded = True  # the app sees a client that went away and stops reading
                    if not message.get("more_body", False):
                        seen = -1  # the body has ended: nothing left to discard
                    return {"type": "http.disconnect"}
            return message

        async def refuse_once() -> None:
            nonlocal refused
            if not refused:
                refused = True
                if seen >= 0:
                    await self._discard(receive, self.drain)
                await self._refuse(send)

        async def guarded_send(message) -> None:  # noqa: ANN001
            nonlocal started
            if exceeded:  # whatever the app answers to the cut-off body, the client gets 413
                if not started:
                    await refuse_once()
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await refuse_once()

    @staticmethod
    async def _discard(receive, budget: int) -> None:  # noqa: ANN001
        while budget > 0:
            message = await receive()
            if message["type"] != "http.request":
                return
            budget -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _refuse(self, send) -> None:  # noqa: ANN001
        body = json.dumps({"error": "payload_too_large",
                           "detail": f"request body exceeds {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

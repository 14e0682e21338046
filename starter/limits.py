"""A cap on request bodies: anything over MAX_BODY bytes is refused with 413 before a route (or
JSON parsing) sees it, whether it says its length up front or streams it."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from starter.problems import problem_json

MAX_BODY = 1024 * 1024  # 1 MiB: far above any device, credential or template the API takes


class BodyLimit:
    """ASGI middleware: 413 (problem details) for a body over ``limit`` bytes. The body is read
    here, up to the limit, and replayed to the app: FastAPI would turn an error raised while it
    reads into a 400."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self._app = app
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._limit:
            await self._refuse(scope, receive, send)
            return
        read: list[Message] = []
        size = 0
        while True:
            message = await receive()
            read.append(message)
            if message["type"] != "http.request":
                break  # the client went away: let the app see it
            size += len(message.get("body", b""))
            if size > self._limit:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return read.pop(0) if read else await receive()

        await self._app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_json(
            413,
            f"the request body is larger than {self._limit} bytes; send less",
            scope.get("path", ""),
        )
        await response(scope, receive, send)

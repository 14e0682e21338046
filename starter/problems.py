"""RFC 9457 problem details for every API error, with a message that says what to fix."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    404: "Not found",
    409: "Conflict",
    413: "Content too large",
    422: "Invalid input",
    503: "Service unavailable",
}


# The body of every error answer (RFC 9457), as the OpenAPI document shows it.
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "required": ["type", "title", "status", "detail", "instance"],
    "properties": {
        "type": {"type": "string", "description": "always about:blank: the status says it all"},
        "title": {"type": "string", "description": "the status in words"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "what went wrong and what to do about it"},
        "instance": {"type": "string", "description": "the path that was called"},
        "errors": {
            "type": "array",
            "description": "422: each bad field and why",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "additionalProperties": True,
}
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def problem_response(description: str) -> dict[str, Any]:
    """An OpenAPI ``responses=`` entry for an RFC 9457 problem answer."""
    return {"description": description, "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}}}


def document_problems(app: FastAPI) -> None:
    """Show every 4xx and 5xx answer of every route with the problem schema, whatever its route
    declared (a bare description, or FastAPI's own 422 body, which this API never sends)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = build()
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        schemas["Problem"] = PROBLEM_SCHEMA
        for path, methods in spec.get("paths", {}).items():
            for operation in methods.values():
                answers = operation.setdefault("responses", {})
                # What any route of its shape can answer, whether or not it says so.
                if "requestBody" in operation:
                    answers.setdefault("400", {"description": "the body is not JSON"})
                if path.startswith("/v1/") and "{" in path:
                    answers.setdefault("404", {"description": "no such object (see detail)"})
                for status, answer in answers.items():
                    if status[0] in "45":
                        answer["content"] = {PROBLEM_JSON: {"schema": _PROBLEM_REF}}
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend it


class Problem(Exception):
    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        self.status = status
        self.detail = detail
        self.extra = extra
        super().__init__(detail)


def not_found(kind: str, key: str) -> Problem:
    return Problem(404, f"no {kind} with id {key!r}; list them with GET /v1/{kind}s")


def invalid(field: str, message: str) -> Problem:
    return Problem(422, f"{field}: {message}", errors=[{"field": field, "message": message}])


def problem_json(status: int, detail: str, instance: str, **extra: Any) -> JSONResponse:
    """The RFC 9457 answer itself (``problem_response`` is its OpenAPI entry)."""
    body = {
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": instance,
        **extra,
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


# Told of every refused request (its status and detail): the audit trail records them.
OnRefusal = Callable[[Request, int, str], Awaitable[None]]


def install(app: FastAPI, on_refusal: OnRefusal | None = None) -> None:
    async def refused(request: Request, status: int, detail: str) -> None:
        if on_refusal is not None:
            await on_refusal(request, status, detail)

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        await refused(request, exc.status, exc.detail)
        return problem_json(exc.status, exc.detail, request.url.path, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        await refused(request, exc.status_code, str(exc.detail))
        return problem_json(exc.status_code, str(exc.detail), request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Pydantic echoes the offending input by default; a password must never come back.
        errors = [
            {
                "field": ".".join(str(p) for p in err.get("loc", ()) if p != "body"),
                "message": err.get("msg", "invalid"),
            }
            for err in exc.errors()
        ]
        detail = "; ".join(f"{e['field'] or 'body'}: {e['message']}" for e in errors)
        await refused(request, 422, detail)
        return problem_json(422, detail, request.url.path, errors=errors)

"""The HTTP starter (FastAPI): ``keyturn api``. OpenAPI page at /docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi_offline import FastAPIOffline
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.client import Client

from keyturn.settings import Settings
from keyturn.temporal import connect
from starter import authz, problems
from starter.deps import AppState, principal_of
from starter.limits import MAX_BODY, BodyLimit
from starter.problems import problem_response
from starter.routes import (
    access,
    audit,
    certificates,
    codec,
    dashboard,
    inventory,
    metrics,
    operations,
    principals,
    tasks,
    templates,
    versions,
)
from starter.schemas import HealthOut
from store import audit as audit_trail
from store.engine import in_thread, make_engine
from store.principals import ensure_bootstrap as bootstrap_principal
from store.seed import seed_shipped_templates
from store.vault import Vault


def create_app(
    settings: Settings, engine: Engine | None = None, client: Client | None = None
) -> FastAPI:
    """Build the app; tests pass their own engine and client, production builds them at startup."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not hasattr(app.state, "keyturn"):
            db = make_engine(settings.resolved_database_url)
            seed_shipped_templates(db)
            _ensure_bootstrap(db)
            app.state.keyturn = AppState(
                settings, db, Vault(settings.keyring), await connect(settings)
            )
        yield

    # The OpenAPI pages load Swagger UI and ReDoc from the API itself, never from a CDN: a
    # vault's API host usually reaches no outside network, and a script from elsewhere would run
    # with access to the token typed into the page. No /redoc: ReDoc draws a logo from its CDN.
    app = FastAPIOffline(
        redoc_url=None,
        title="Keyturn",
        summary="Durable execution engine for privileged access management",
        version="0.1.0",
        lifespan=lifespan,
    )
    if engine is not None and client is not None:
        seed_shipped_templates(engine)
        _ensure_bootstrap(engine)
        app.state.keyturn = AppState(settings, engine, Vault(settings.keyring), client)
    problems.install(app, on_refusal=_record_refusal)
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    every_route_may_answer: dict[int | str, dict[str, Any]] = {
        413: problem_response(f"the request body is larger than {MAX_BODY} bytes"),
    }
    for router in (
        inventory.router,
        templates.router,
        principals.router,
        operations.router,
        tasks.router,
        access.router,
        versions.router,
        certificates.router,
        audit.router,
        dashboard.api,
    ):
        authz.guard_router(router)
        app.include_router(
            router,
            prefix="/v1",
            dependencies=[Depends(authz.authenticate)],
            responses=every_route_may_answer,
        )

    @app.get("/healthz", response_model=HealthOut, tags=["health"])
    def healthz() -> HealthOut:
        """Liveness: the API process answers. No token needed, nothing read or revealed."""
        return HealthOut(status="ok")

    app.include_router(metrics.router)
    app.include_router(codec.router)
    app.include_router(dashboard.page)
    # Only the codec answers cross-origin requests, and only from the Temporal Web UI.
    app.add_middleware(CodecCors, origins=settings.codec_ui_origins)
    problems.document_problems(app)
    return app


class CodecCors:
    """CORS for the codec endpoints alone: the rest of the API stays same-origin."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self._app = app
        self._cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["POST"],
            allow_headers=["authorization", "content-type", "x-namespace"],
            allow_credentials=True,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/codec/"):
            await self._cors(scope, receive, send)
        else:
            await self._app(scope, receive, send)


def _ensure_bootstrap(engine: Engine) -> None:
    with Session(engine) as db:
        bootstrap_principal(db)


async def _record_refusal(request: Request, status: int, detail: str) -> None:
    """Every refused API call is an audit event (the detail never echoes a request's body)."""
    app: AppState | None = getattr(request.app.state, "keyturn", None)
    if app is None:
        return
    principal = principal_of(request)
    await in_thread(
        app.engine,
        lambda db: _append_refusal(
            db, principal, request.method, codec.redact(request.url.path), status, detail
        ),
    )


def _append_refusal(
    db: Session, principal: str, method: str, path: str, status: int, detail: str
) -> None:
    audit_trail.record(
        db, "api.refused", principal=principal, outcome="refused", method=method, path=path,
        status=status, reason=detail,
    )  # fmt: skip
    db.commit()

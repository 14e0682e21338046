"""The HTTP starter (FastAPI): ``keyturn api``. OpenAPI page at /docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from sqlalchemy.engine import Engine
from temporalio.client import Client

from keyturn.settings import Settings
from keyturn.temporal import connect
from starter import problems
from starter.deps import AppState, require_token
from starter.limits import MAX_BODY, BodyLimit
from starter.problems import problem_response
from starter.routes import access, inventory, operations, versions
from starter.schemas import HealthOut
from store.engine import make_engine
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
            app.state.keyturn = AppState(
                settings, db, Vault(settings.master_key_bytes), await connect(settings)
            )
        yield

    app = FastAPI(
        title="Keyturn",
        summary="Durable execution engine for privileged access management",
        version="0.1.0",
        lifespan=lifespan,
    )
    if engine is not None and client is not None:
        seed_shipped_templates(engine)
        app.state.keyturn = AppState(settings, engine, Vault(settings.master_key_bytes), client)
    problems.install(app)
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    every_route_may_answer: dict[int | str, dict[str, Any]] = {
        401: problem_response("missing or wrong admin API token"),
        413: problem_response(f"the request body is larger than {MAX_BODY} bytes"),
    }
    for router in (inventory.router, operations.router, access.router, versions.router):
        app.include_router(
            router,
            prefix="/v1",
            dependencies=[Depends(require_token)],
            responses=every_route_may_answer,
        )

    @app.get("/healthz", response_model=HealthOut, tags=["health"])
    def healthz() -> HealthOut:
        """Liveness: the API process answers. No token needed, nothing read or revealed."""
        return HealthOut(status="ok")

    return app

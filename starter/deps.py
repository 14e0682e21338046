"""Dependencies injected into routes: the store session, the Temporal client, the caller's token.

The store is synchronous (SQLModel), and a connection may only be held by code running in a
thread that gives it back before it returns, never while waiting for anything else: then a
request waiting for a connection only ever waits for a thread that is already working.

- The event loop never touches the store: a connection it waits for may be held by a request
  that needs the loop to finish (a burst of requests then hangs everything, worker included).
- Sync (``def``) routes take a ``DB`` session and run in FastAPI's thread pool. ``StoreRoute``
  closes that session when the route returns, in the route's thread: FastAPI would close it only
  after validating the response, in the thread pool again, and sending it, so a burst of requests
  would hold every connection while waiting for a thread held by a request waiting for one.
- The few ``async`` routes, those that await Temporal, never take ``DB`` (``StoreRoute`` refuses
  them): they do each store step with ``in_thread``, holding no session across an await.
"""

from __future__ import annotations

import functools
import inspect
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio.client import Client

from keyturn.settings import Settings
from store.vault import Vault


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    vault: Vault
    client: Client


def state(request: Request) -> AppState:
    app_state: AppState = request.app.state.keyturn
    return app_state


def session(app: Annotated[AppState, Depends(state)]) -> Iterator[Session]:
    """For sync routes only (see the module's docstring)."""
    with Session(app.engine, expire_on_commit=False) as db:
        yield db


_T = TypeVar("_T")


class StoreRoute(APIRoute):
    """A route whose ``DB`` session is closed, its connection back in the pool, as soon as its
    sync endpoint returns, in the endpoint's thread. An async endpoint may not take ``DB``."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        asynchronous = inspect.iscoroutinefunction(endpoint)
        super().__init__(path, endpoint if asynchronous else _closing_sessions(endpoint), **kwargs)
        if asynchronous and _depends_on(self.dependant, session):
            raise TypeError(
                f"{endpoint.__name__} is async: it may not take DB (a session held across an "
                "await); do its store steps with in_thread, or make it a def route"
            )


def _closing_sessions(endpoint: Callable[..., _T]) -> Callable[..., _T]:
    @functools.wraps(endpoint)
    def run(*args: Any, **kwargs: Any) -> _T:
        try:
            return endpoint(*args, **kwargs)
        finally:
            for value in (*args, *kwargs.values()):
                if isinstance(value, Session):
                    value.close()  # rows stay readable: expire_on_commit=False, no lazy loads

    return run


def _depends_on(dependant: Dependant, call: Callable[..., Any]) -> bool:
    return any(d.call is call or _depends_on(d, call) for d in dependant.dependencies)


# The principal of the admin token, as the audit trail and the SIEM echo name it.
ADMIN = "admin"
ANONYMOUS = "anonymous"


def principal_of(request: Request) -> str:
    """Who sent this request: the principal its token authenticated (also when the token was
    refused as revoked or expired), the admin token's holder, or someone without a token."""
    known: str | None = getattr(request.state, "principal", None)
    if known is not None:
        return known
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    app: AppState | None = getattr(request.app.state, "keyturn", None)
    if app is None or scheme.lower() != "bearer":
        return ANONYMOUS
    expected = app.settings.resolved_admin_token
    return ADMIN if secrets.compare_digest(token.encode(), expected.encode()) else ANONYMOUS


State = Annotated[AppState, Depends(state)]
DB = Annotated[Session, Depends(session)]  # sync routes only

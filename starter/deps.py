"""Dependencies injected into routes: the store session, the Temporal client, the caller's token."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio.client import Client

from keyturn.settings import Settings
from starter.problems import Problem
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
    with Session(app.engine, expire_on_commit=False) as db:
        yield db


_bearer = HTTPBearer(auto_error=False)


def require_token(
    app: Annotated[AppState, Depends(state)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    expected = app.settings.resolved_admin_token
    if credentials is None or not secrets.compare_digest(
        credentials.credentials.encode(), expected.encode()
    ):
        raise Problem(401, "send 'Authorization: Bearer <token>' with the admin API token")


State = Annotated[AppState, Depends(state)]
DB = Annotated[Session, Depends(session)]

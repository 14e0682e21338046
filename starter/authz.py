"""Who may call which route: principals, roles and profiles.

Every ``/v1`` route authenticates its caller (``authenticate``, 401 without a valid token) and
declares, next to its other parameters, the roles it admits::

    def list_devices(db: DB, caller: Annotated[Caller, Depends(allow(OPERATOR, AUDITOR))]): ...

``admin`` is admitted everywhere. The rule also documents the route (``x-keyturn-roles`` in the
OpenAPI, its description and the 403 answer), and the authorization test enumerates the app's
route table: a route without a rule is admitted to ``admin`` alone and fails that test.

Profiles are checked by the route, since only it knows its objects: ``caller.sees(profile)``,
and ``hidden`` for the 404 that keeps an object outside the caller's profiles unknown.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session

from starter.deps import AppState, state
from starter.problems import Problem, not_found, problem_response
from store import principals
from store.models import Credential, Principal, Role
from store.queries import within_profiles

ADMIN, OPERATOR, AUDITOR, APP = Role.ADMIN, Role.OPERATOR, Role.AUDITOR, Role.APP
TEMPLATE_AUTHOR, APPROVER = Role.TEMPLATE_AUTHOR, Role.APPROVER
# Everyone who may read inventory and operations (within their profiles).
READERS = (OPERATOR, AUDITOR)
ROLES_EXTENSION = "x-keyturn-roles"


@dataclass(frozen=True)
class Caller:
    """The authenticated principal of a request."""

    id: str
    name: str  # what the audit trail and the SIEM echo call it
    role: Role
    profiles: tuple[str, ...] | None  # sorted; None: every profile (an admin)
    credential_ids: frozenset[str]  # an app's granted credentials

    @classmethod
    def of(cls, row: Principal) -> Caller:
        role = Role(row.role)
        return cls(
            id=row.id,
            name=row.name,
            role=role,
            profiles=None if role == ADMIN else tuple(sorted(set(row.profiles))),
            credential_ids=frozenset(row.credential_ids),
        )

    def sees(self, profile: str) -> bool:
        return self.profiles is None or profile in self.profiles

    def sees_rows(self, profile: Any) -> ColumnElement[bool]:
        """``sees`` for a query: rows whose ``profile`` column is one of the caller's."""
        return within_profiles(profile, self.profiles)


def hidden(caller: Caller, profile: str, kind: str, key: str) -> None:
    """404, as for an object that does not exist, when ``profile`` is outside the caller's."""
    if not caller.sees(profile):
        raise not_found(kind, key)


_bearer = HTTPBearer(auto_error=False)
# The holder of KEYTURN_ADMIN_TOKEN: the bootstrap principal, for setup.
BOOTSTRAP = Caller(principals.BOOTSTRAP_ID, principals.BOOTSTRAP_NAME, ADMIN, None, frozenset())


def authenticate(
    request: Request,
    app: Annotated[AppState, Depends(state)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller, from its bearer token: the bootstrap admin token or a principal's token.
    A sync dependency: the store is read in the thread pool, never on the event loop."""
    if credentials is None:
        raise Problem(401, "send 'Authorization: Bearer <token>' with your API token")
    return caller_of(request, app, credentials.credentials)


def caller_of(request: Request, app: AppState, token: str) -> Caller:
    """The principal a token authenticates, or the 401 that says why not."""
    if secrets.compare_digest(token.encode(), app.settings.resolved_admin_token.encode()):
        caller = BOOTSTRAP
    else:
        with Session(app.engine) as db:
            found = principals.authenticate(db, token)
        if found is None:
            raise Problem(401, "this token is not valid: send a token Keyturn issued")
        if isinstance(found, principals.Refused):
            request.state.principal = found.principal.name  # the refusal is audited as theirs
            raise Problem(401, f"{found.reason}; ask an administrator for a new one")
        caller = Caller.of(found)
    request.state.principal = caller.name
    return caller


class Rule:
    """A route's requirement: the roles it admits (``admin`` always). ``declared`` is false for
    the rule a route gets when it declares none: admin alone."""

    def __init__(self, roles: Iterable[Role], declared: bool = True) -> None:
        self.roles = (ADMIN, *(r for r in roles if r != ADMIN))
        self.declared = declared

    def __call__(
        self, request: Request, caller: Annotated[Caller, Depends(authenticate)]
    ) -> Caller:
        if caller.role not in self.roles:
            raise Problem(
                403,
                f"role {caller.role} may not {request.method} {request.url.path}; it needs "
                f"one of: {', '.join(self.roles)}",
            )
        return caller

    def describe(self) -> str:
        return f"Roles: {', '.join(self.roles)}."


def allow(*roles: Role) -> Rule:
    return Rule(roles)


Admin = Annotated[Caller, Depends(allow())]
Reader = Annotated[Caller, Depends(allow(*READERS))]
_RULE = "keyturn_rule"


def rule_of(route: APIRoute) -> Rule | None:
    """The rule a route declares, or the admin-only one ``guard_router`` gave it."""
    given: Rule | None = getattr(route, _RULE, None)
    return given or _find_rule(route.dependant)


def _find_rule(dependant: Dependant) -> Rule | None:
    for dep in dependant.dependencies:
        if isinstance(dep.call, Rule):
            return dep.call
        found = _find_rule(dep)
        if found is not None:
            return found
    return None


def guard_router(router: APIRouter) -> None:
    """Before the router is included: give each route that declares no rule the admin-only one
    (fail closed), and show each route's rule in its OpenAPI (``x-keyturn-roles``, the
    description, 401, 403, and 404 where the path names an object). Idempotent."""
    for route in router.routes:
        if not isinstance(route, APIRoute) or getattr(route, _RULE, None) is not None:
            continue
        rule = _find_rule(route.dependant)
        if rule is None:
            rule = Rule((), declared=False)
            route.dependencies.append(Depends(rule))
        setattr(route, _RULE, rule)
        route.openapi_extra = {**(route.openapi_extra or {}), ROLES_EXTENSION: list(rule.roles)}
        route.description = f"{route.description}\n\n{rule.describe()}".strip()
        route.responses = {
            **route.responses,
            401: problem_response("no token, or one not valid (unknown, revoked or expired)"),
            403: problem_response(f"the caller's role is not one of: {', '.join(rule.roles)}"),
        }
        if "{" in route.path and 404 not in route.responses:
            route.responses[404] = problem_response(
                "no such object, or one outside the caller's profiles"
            )


def credential_for(db: Session, caller: Caller, credential_id: str) -> Credential:
    """The credential, or the 404 of one that does not exist when it is outside the caller's
    profiles. An app's reach is its granted credentials (``granted``), whatever their profile."""
    credential = db.get(Credential, credential_id)
    reaches = credential_id in caller.credential_ids if caller.role == APP else None
    if credential is None or not (reaches or caller.sees(credential.profile)):
        raise not_found("credential", credential_id)
    return credential


def granted(caller: Caller, credential_id: str) -> None:
    """An app acts only on the credentials granted to it: 403 for any other."""
    if caller.role == APP and credential_id not in caller.credential_ids:
        raise Problem(403, f"{caller.name} is not granted credential {credential_id}")

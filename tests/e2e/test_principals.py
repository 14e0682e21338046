"""Principals, roles and profiles, through the HTTP API: an authorization matrix generated from
the app's own route table, profile segregation, app principals, template maker-checker, and
refused tokens."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from sqlmodel import Session, col, select

from starter.app import create_app
from starter.authz import ROLES_EXTENSION, rule_of
from store.models import (
    AuditEvent,
    Certificate,
    CertificateAuthority,
    CertStatus,
    Credential,
    Operation,
    OperationStatus,
    Principal,
    PrincipalToken,
    SyncState,
    TaskRun,
)
from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, policy, ssh_device
from tests.e2e.leaks import assert_not_in_logs, assert_not_in_store
from tests.e2e.secrets_search import assert_no_secret
from tests.servers.sshd import Sshd, Users

ROLES = ("admin", "operator", "auditor", "app", "template-author", "approver")
PROFILED = (
    "device_id", "credential_id", "operation_id", "version_id", "task_id", "run_id",
    "certificate_id",
)  # fmt: skip
OLD = "Old-pass w0rd;$#'\"\\x"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def make_principal(stack: Stack, role: str, **fields: Any) -> dict[str, Any]:
    body = {"name": f"{role}-{secrets.token_hex(4)}", "role": role, **fields}
    return await stack.post("/v1/principals", body)


@dataclass
class World:
    """Objects in two profiles, a principal of every role scoped to the first, and the values
    each route's path parameters take inside and outside that profile."""

    a: str
    b: str
    tokens: dict[str, str]
    names: dict[str, str]
    params: dict[str, dict[str, str]]  # "in" | "out" → path parameter → value


async def _profile_objects(stack: Stack, profile: str, ca: str) -> dict[str, str]:
    device = await stack.post(
        "/v1/devices",
        {
            "name": f"host-{secrets.token_hex(4)}",
            "address": "127.0.0.1",
            "port": 1,
            "executor": "ssh",
            "trust_on_first_use": True,
            "profile": profile,
        },
    )
    cred = await stack.post(
        "/v1/credentials", {"device_id": device["id"], "username": "u", "password": "x"}
    )
    assert cred["profile"] == profile  # a credential's profile is its device's
    operation = Operation(
        id=secrets.token_hex(16),
        credential_id=cred["id"],
        kind="verify",
        workflow_id=f"none-{secrets.token_hex(4)}",
        status=OperationStatus.SUCCEEDED,
        requested_by="admin",
    )
    operation_id = operation.id
    task = await stack.post(
        "/v1/tasks",
        {"name": f"task-{secrets.token_hex(4)}", "template": "ssh/uptime",
         "credential_ids": [cred["id"]]},
    )  # fmt: skip
    run = TaskRun(
        task_id=task["id"],
        workflow_id=f"none-{secrets.token_hex(4)}",
        status=OperationStatus.SUCCEEDED,
        requested_by="admin",
    )
    run_id = run.id
    # A revoked certificate of someone else's: every action on it is refused without starting
    # anything (409), or its body is (422).
    certificate = Certificate(
        name=f"cert-{secrets.token_hex(4)}", subject="CN=x", key_type="ecdsa-p256",
        validity_days=1, ca=ca, status=CertStatus.REVOKED, requested_by="someone-else",
        profile=profile,
    )  # fmt: skip
    certificate_id = certificate.id
    with Session(stack.engine) as db:
        db.add_all([operation, run, certificate])
        db.commit()
    return {
        "device_id": device["id"],
        "credential_id": cred["id"],
        "operation_id": operation_id,
        "version_id": cred["current_version_id"],
        "task_id": task["id"],
        "run_id": run_id,
        "certificate_id": certificate_id,
    }


@pytest.fixture(scope="module")
async def world(stack: Stack) -> World:
    a, b = f"pa-{secrets.token_hex(3)}", f"pb-{secrets.token_hex(3)}"
    ca = CertificateAuthority(name=f"ca-{secrets.token_hex(4)}", plugin="internal", crl_der=b"0")
    ca_name = ca.name
    with Session(stack.engine) as db:
        db.add(ca)
        db.commit()
    inside = await _profile_objects(stack, a, ca_name)
    outside = await _profile_objects(stack, b, ca_name)
    tokens = {"admin": stack.api.headers["Authorization"].removeprefix("Bearer ")}
    names = {"admin": "admin"}
    for role in ROLES[1:]:
        extra: dict[str, Any] = {"profiles": [a]}
        if role == "app":
            extra["credential_ids"] = [inside["credential_id"]]
        made = await make_principal(stack, role, **extra)
        tokens[role], names[role] = made["token"], made["name"]
    victim = await make_principal(stack, "auditor")
    shared = {
        "policy_id": (await policy(stack))["id"],
        "name": "ssh/linux-passwd",
        "version": "1",
        "principal_id": victim["id"],
        "prefix": victim["token_prefix"],
        "ca_name": ca_name,
    }
    return World(a, b, tokens, names, {"in": {**inside, **shared}, "out": {**outside, **shared}})


@pytest.fixture(scope="module")
async def fresh_app(stack: Stack) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    app = create_app(stack.settings, stack.engine, stack.client)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://keyturn.test"
    ) as client:
        yield app, client


def _api_routes(app: Any) -> list[tuple[str, str, APIRoute]]:
    found = []
    for ctx in iter_route_contexts(app.routes):
        route = ctx.original_route
        if isinstance(route, APIRoute) and ctx.path and ctx.path.startswith("/v1/"):
            found += [(method, ctx.path, route) for method in sorted(ctx.methods or ())]
    return found


async def test_every_route_declares_its_rule_and_shows_it(
    fresh_app: tuple[Any, httpx.AsyncClient],
) -> None:
    app, client = fresh_app
    routes = _api_routes(app)
    assert len(routes) > 30
    unruled = [f"{m} {p}" for m, p, route in routes if not rule_of(route).declared]  # type: ignore[union-attr]
    assert not unruled, f"declare a rule (starter.authz.allow) on: {unruled}"
    spec = (await client.get("/openapi.json")).json()
    for method, path, _ in routes:
        operation = spec["paths"][path.replace(":path", "")][method.lower()]
        assert operation[ROLES_EXTENSION][0] == "admin", (method, path)
        assert {"401", "403"} <= set(operation["responses"]), (method, path)
        assert "Roles:" in operation["description"], (method, path)


@pytest.mark.parametrize("role", ROLES)
async def test_authorization_matrix(
    stack: Stack, world: World, fresh_app: tuple[Any, httpx.AsyncClient], role: str
) -> None:
    """Every route × this role × an object inside and outside the role's profiles: a role the
    rule does not admit gets 403; an admitted one is served inside its profiles and gets 404
    outside them (an app: 403 outside its granted credentials). A route added without a rule
    is admin-only, so this matrix fails for it."""
    app, client = fresh_app
    failures = []
    for method, path, route in _api_routes(app):
        rule = rule_of(route)
        assert rule is not None
        names = [m.group(1) for m in re.finditer(r"{(\w+)(?::\w+)?}", path)]
        profiled = any(n in PROFILED for n in names)
        for scope in ("in", "out") if profiled else ("in",):
            values = world.params[scope]
            missing = [n for n in names if n not in values]
            assert not missing, f"{path}: give the matrix a value for {missing}"
            url = _fill(path, values)
            has_body = method in ("POST", "PATCH", "PUT")
            response = await client.request(
                method, url, headers=bearer(world.tokens[role]), json={} if has_body else None
            )
            status = response.status_code
            if role not in rule.roles:
                expected_ok = status == 403
            elif scope == "out" and role == "app":
                expected_ok = status in ((403, 422) if has_body else (403,))
            elif scope == "out" and role != "admin":
                expected_ok = status in ((404, 422) if has_body else (404,))
            else:
                expected_ok = status not in (401, 403, 404) and status < 500
            if not expected_ok:
                failures.append(f"{method} {path} [{scope}] → {status} {response.text[:200]}")
    assert not failures, "\n".join(failures)


async def test_an_operator_of_one_profile_sees_nothing_of_another(
    stack: Stack, world: World
) -> None:
    operator = bearer(world.tokens["operator"])
    inside, outside = world.params["in"], world.params["out"]

    async def get(path: str, who: dict[str, str] = operator) -> httpx.Response:
        return await stack.api.get(path, headers=who)

    devices = {d["id"] for d in (await get("/v1/devices?limit=500")).json()["items"]}
    assert inside["device_id"] in devices and outside["device_id"] not in devices
    creds = {c["id"] for c in (await get("/v1/credentials?limit=500")).json()["items"]}
    assert inside["credential_id"] in creds and outside["credential_id"] not in creds
    operations = {o["id"] for o in (await get("/v1/operations?limit=500")).json()["items"]}
    assert inside["operation_id"] in operations and outside["operation_id"] not in operations
    tasks = {t["id"] for t in (await get("/v1/tasks?limit=500")).json()["items"]}
    assert inside["task_id"] in tasks and outside["task_id"] not in tasks
    for path in (
        f"/v1/devices/{outside['device_id']}",
        f"/v1/credentials/{outside['credential_id']}",
        f"/v1/credentials/{outside['credential_id']}/versions",
        f"/v1/credentials/{outside['credential_id']}/operations",
        f"/v1/operations/{outside['operation_id']}",
        f"/v1/tasks/{outside['task_id']}",
        f"/v1/tasks/{outside['task_id']}/runs/{outside['run_id']}",
    ):
        refused = await get(path)
        assert refused.status_code == 404, path
        assert refused.headers["content-type"] == "application/problem+json"
    changed = await stack.api.patch(
        f"/v1/credentials/{outside['credential_id']}", json={"auto_reconcile": False},
        headers=operator,
    )  # fmt: skip
    assert changed.status_code == 404
    requested = await stack.api.post(
        f"/v1/credentials/{outside['credential_id']}/operations", json={"kind": "verify"},
        headers=operator,
    )  # fmt: skip
    assert requested.status_code == 404
    misplaced = await stack.api.post(
        "/v1/devices",
        json={"name": "x-" + secrets.token_hex(3), "address": "127.0.0.1", "executor": "ssh",
              "trust_on_first_use": True, "profile": world.b},
        headers=operator,
    )  # fmt: skip
    assert misplaced.status_code == 403
    # Only an admin points a template that sends another credential's password at it.
    privileged = {"device_id": inside["device_id"], "username": "v", "password": "x",
                  "auth_credential_id": inside["credential_id"]}  # fmt: skip
    refused = await stack.api.post("/v1/credentials", json=privileged, headers=operator)
    assert refused.status_code == 403 and "only an admin" in refused.json()["detail"]
    await stack.post("/v1/credentials", privileged)
    for secret in (
        f"/v1/credentials/{inside['credential_id']}/secret",
        f"/v1/credentials/{inside['credential_id']}/versions/{inside['version_id']}/secret?reason=x",
    ):
        assert (await get(secret)).status_code == 403
    # The auditor of the same profile reads the trail of that profile only.
    trail = (await get("/v1/audit?limit=1000", bearer(world.tokens["auditor"]))).json()["items"]
    seen = {e["credential_id"] for e in trail} | {e["device_id"] for e in trail}
    assert inside["credential_id"] in seen
    assert not {outside["credential_id"], outside["device_id"]} & seen
    # Every refusal was recorded with the operator's name.
    with Session(stack.engine) as db:
        refusals = db.exec(
            select(AuditEvent).where(
                AuditEvent.event == "api.refused", AuditEvent.principal == world.names["operator"]
            )
        ).all()
    assert {r.detail["status"] for r in refusals} >= {403, 404}


async def test_an_app_reads_only_its_granted_secrets_and_requests_a2a_changes(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    pol = await policy(stack, max_attempts=1)
    mine = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])
    other = await credential(stack, device["id"], ssh_users.create(OLD), OLD)
    app = await make_principal(stack, "app", credential_ids=[mine["id"]])
    as_app = bearer(app["token"])
    read = await stack.api.get(f"/v1/credentials/{mine['id']}/secret", headers=as_app)
    assert read.status_code == 200 and read.json()["password"] == OLD
    assert (
        await stack.api.get(f"/v1/credentials/{other['id']}/secret", headers=as_app)
    ).status_code == 403
    for body in ({"kind": "change"}, {"kind": "verify", "trigger": "a2a"}):
        refused = await stack.api.post(
            f"/v1/credentials/{mine['id']}/operations", json=body, headers=as_app
        )
        assert refused.status_code == 403, body
    assert (
        await stack.api.post(
            f"/v1/credentials/{other['id']}/operations",
            json={"kind": "change", "trigger": "a2a"},
            headers=as_app,
        )
    ).status_code == 403
    assert (await stack.api.get("/v1/devices", headers=as_app)).status_code == 403
    accepted = await stack.api.post(
        f"/v1/credentials/{mine['id']}/operations",
        json={"kind": "change", "trigger": "a2a"},
        headers=as_app,
    )
    assert accepted.status_code == 202, accepted.text
    await stack.client.get_workflow_handle(accepted.json()["workflow_id"]).result()
    done = await stack.get(f"/v1/operations/{accepted.json()['operation_id']}")
    assert (done["trigger"], done["status"]) == ("a2a", "succeeded")
    with Session(stack.engine) as db:
        operation = db.get(Operation, done["id"])
        assert operation is not None and operation.requested_by == app["name"]
        events = db.exec(select(AuditEvent).where(AuditEvent.credential_id == mine["id"])).all()
        refusals = db.exec(
            select(AuditEvent).where(
                AuditEvent.event == "api.refused", AuditEvent.principal == app["name"]
            )
        ).all()
    by_event = {(e.event, e.principal) for e in events}
    assert ("secret.viewed", app["name"]) in by_event
    assert any(e.operation_id == done["id"] and e.principal == app["name"] for e in events)
    assert len(refusals) == 5  # the other secret, two bodies, the other credential, devices


async def test_app_changes_run_concurrently_with_others_on_the_same_credential(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    """Two a2a changes and an operator's verify of the same credential, requested together:
    the changes are one operation (the second joins), the verify queues, all succeed."""
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    cred = await credential(stack, device["id"], user, OLD)
    app = bearer((await make_principal(stack, "app", credential_ids=[cred["id"]]))["token"])
    operator = bearer((await make_principal(stack, "operator", profiles=["default"]))["token"])
    url = f"/v1/credentials/{cred['id']}/operations"
    change = {"kind": "change", "trigger": "a2a"}
    answers = await asyncio.gather(
        stack.api.post(url, json=change, headers=app),
        stack.api.post(url, json=change, headers=app),
        stack.api.post(url, json={"kind": "verify"}, headers=operator),
    )
    assert all(a.status_code in (200, 202) for a in answers), [a.text for a in answers]
    ids = {a.json()["operation_id"] for a in answers}
    assert len(ids) == 2  # the second change joined the first
    for answer in answers:
        await stack.client.get_workflow_handle(answer.json()["workflow_id"]).result()
    for operation_id in ids:
        assert (await stack.get(f"/v1/operations/{operation_id}"))["status"] == "succeeded"
    assert not await ssh_users.password_works(user, OLD)


async def test_a_template_version_runs_only_once_another_principal_approves_it(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    author = bearer((await make_principal(stack, "template-author"))["token"])
    approver = bearer((await make_principal(stack, "approver"))["token"])
    name = f"ssh/reviewed-{secrets.token_hex(4)}"
    passwd = _shipped_passwd()

    async def propose(body: str) -> int:
        saved = await stack.api.post(
            "/v1/templates",
            json={"name": name, "executor": "ssh", "kind": "change", "body": body},
            headers=author,
        )
        assert saved.status_code == 201, saved.text
        assert saved.json()["status"] == "pending"
        return int(saved.json()["version"])

    async def review(version: int, who: dict[str, str], verdict: str = "approve") -> int:
        url = f"/v1/templates/{name}/versions/{version}/{verdict}"
        return (await stack.api.post(url, json={"note": "ok"}, headers=who)).status_code

    first = await propose(passwd + "exec: echo keyturn-v1-ran\nexit: 0\n")
    device = await ssh_device(stack, sshd)
    user = ssh_users.create(OLD)
    pol = await policy(stack, max_attempts=1)
    unapproved = await stack.api.post(
        "/v1/credentials",
        json={"device_id": device["id"], "username": user, "password": OLD,
              "change_template": name, "policy_id": pol["id"]},
    )  # fmt: skip
    assert unapproved.status_code == 422 and "approved" in unapproved.text
    assert await review(first, author) == 403  # an author does not review
    assert await review(first, approver) == 200
    # Nor does anyone review their own version, an admin included.
    own = await stack.post(
        "/v1/templates",
        {"name": name + "-own", "executor": "ssh", "kind": "change", "body": passwd},
    )
    approve_own = f"/v1/templates/{own['name']}/versions/1/approve"
    assert (await stack.api.post(approve_own, json={})).status_code == 409
    cred = await credential(
        stack, device["id"], user, OLD, change_template=name, policy_id=pol["id"]
    )
    second = await propose(passwd + "exec: echo keyturn-v2-ran\nexit: 0\n")
    rejected = await propose(passwd + "exec: echo keyturn-v3-ran\nexit: 0\n")
    assert await review(rejected, approver, "reject") == 200
    assert await review(rejected, approver) == 409  # rejected stays rejected
    # Requested while v2 is pending: it runs v1, even though v2 is approved before it ends.
    before = await stack.post(
        f"/v1/credentials/{cred['id']}/operations", {"kind": "change"}, expect=202
    )
    assert await review(second, approver) == 200
    await stack.client.get_workflow_handle(before["workflow_id"]).result()
    after = await stack.run_operation(cred["id"])
    ran_before = await stack.get(f"/v1/operations/{before['operation_id']}")
    assert (ran_before["status"], after["status"]) == ("succeeded", "succeeded")
    transcript_before = " ".join(a["transcript"] for a in ran_before["attempts"])
    transcript_after = " ".join(a["transcript"] for a in after["attempts"])
    assert "keyturn-v1-ran" in transcript_before and "keyturn-v2-ran" not in transcript_before
    assert "keyturn-v2-ran" in transcript_after
    listed = (await stack.api.get(f"/v1/templates/{name}/versions")).json()["items"]
    statuses = {v["version"]: (v["status"], v["author"] != v["reviewed_by"]) for v in listed}
    assert statuses == {1: ("superseded", True), 2: ("approved", True), 3: ("rejected", True)}
    diff = await stack.get(f"/v1/templates/{name}/versions/2/diff")
    assert diff["against"] == 1 and "+exec: echo keyturn-v2-ran" in diff["diff"]


async def test_revoked_and_expired_tokens_are_refused_and_audited(stack: Stack) -> None:
    made = await make_principal(stack, "auditor", profiles=["default"])
    token = bearer(made["token"])
    assert (await stack.api.get("/v1/devices", headers=token)).status_code == 200
    with Session(stack.engine) as db:
        stored = db.get(PrincipalToken, made["token_prefix"])
        assert stored is not None and made["token"] not in stored.digest  # only a hash is kept
    revoked = await stack.api.delete(f"/v1/principals/{made['id']}/tokens/{made['token_prefix']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    refused = await stack.api.get("/v1/devices", headers=token)
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]

    soon = datetime.now(UTC) + timedelta(hours=1)
    issued = await stack.post(
        f"/v1/principals/{made['id']}/tokens", {"expires_at": soon.isoformat()}
    )
    with Session(stack.engine) as db:  # an hour passes
        stored = db.get(PrincipalToken, issued["token_prefix"])
        assert stored is not None
        stored.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        db.add(stored)
        db.commit()
    expired = await stack.api.get("/v1/devices", headers=bearer(issued["token"]))
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]
    with Session(stack.engine) as db:
        reasons = [
            e.detail["reason"]
            for e in db.exec(
                select(AuditEvent).where(
                    AuditEvent.event == "api.refused", AuditEvent.principal == made["name"]
                )
            )
        ]
    assert any("revoked" in r for r in reasons) and any("expired" in r for r in reasons)
    assert (await stack.api.get("/v1/devices", headers=bearer("kt_nope.x"))).status_code == 401


def _fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"{(\w+)(?::\w+)?}", lambda m: values[m.group(1)], path)


def _shipped_passwd() -> str:
    from executors.shipped import shipped_templates

    return next(t.body for t in shipped_templates() if t.name == "ssh/linux-passwd")


async def test_a_token_is_shown_once_and_kept_only_as_a_hash(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    made = await make_principal(stack, "operator", profiles=["default"])
    token = made["token"]
    assert token.startswith(made["token_prefix"] + ".")
    assert (await stack.api.get("/v1/devices", headers=bearer(token))).status_code == 200
    listed = await stack.get(f"/v1/principals/{made['id']}")
    assert [t["prefix"] for t in listed["tokens"]] == [made["token_prefix"]]
    assert_no_secret((await stack.api.get("/v1/principals")).content, token)
    assert_no_secret((await stack.api.get("/v1/audit?limit=1000")).content, token)
    assert_not_in_store(stack, token, present=made["token_prefix"])
    assert_not_in_logs(caplog, token)


async def test_refused_principal_requests_change_nothing(stack: Stack) -> None:
    """Every failure of the principal routes answers a problem naming what to fix, and stores
    nothing."""
    taken = await make_principal(stack, "auditor")
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    with Session(stack.engine) as db:
        before = _principal_rows(db)
    for body, status, says in (
        ({"name": taken["name"], "role": "auditor"}, 409, "exists"),
        ({"name": "x-" + secrets.token_hex(3), "role": "operator", "credential_ids": ["c"]},
         422, "only an app"),
        ({"name": "x-" + secrets.token_hex(3), "role": "app", "credential_ids": ["nope"]},
         422, "no credential"),
        ({"name": "x-" + secrets.token_hex(3), "role": "auditor", "expires_at": past},
         422, "future"),
        ({"name": "x-" + secrets.token_hex(3), "role": "root"}, 422, "role"),
    ):  # fmt: skip
        answer = await stack.api.post("/v1/principals", json=body)
        assert answer.status_code == status, (body, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert says in answer.json()["detail"], answer.text
    for method, path, status in (
        ("DELETE", f"/v1/principals/{taken['id']}/tokens/kt_000000000000", 404),
        ("DELETE", f"/v1/principals/nobody/tokens/{taken['token_prefix']}", 404),
        ("POST", "/v1/principals/admin/tokens", 409),
        ("POST", "/v1/principals/nobody/tokens", 404),
    ):
        answer = await stack.api.request(method, path, json={} if method == "POST" else None)
        assert answer.status_code == status, (path, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
    operator = bearer(taken["token"])
    assert (await stack.api.post("/v1/principals", json={}, headers=operator)).status_code == 403
    with Session(stack.engine) as db:
        assert _principal_rows(db) == before


def _principal_rows(db: Session) -> tuple[int, int, int]:
    """Principals, tokens, revoked tokens."""
    revoked = select(PrincipalToken).where(col(PrincipalToken.revoked_at).is_not(None))
    return (
        len(db.exec(select(Principal)).all()),
        len(db.exec(select(PrincipalToken)).all()),
        len(db.exec(revoked).all()),
    )


async def test_the_dashboard_and_the_codec_serve_principals_by_role(
    stack: Stack, world: World
) -> None:
    """The dashboard counts the caller's profiles only; the codec decodes for those who may
    read operations."""
    inside, outside = world.params["in"], world.params["out"]
    with Session(stack.engine) as db:
        for credential_id in (inside["credential_id"], outside["credential_id"]):
            row = db.get(Credential, credential_id)
            assert row is not None
            row.sync_state = SyncState.OUT_OF_SYNC
            db.add(row)
        db.commit()
    try:
        both = {inside["credential_id"], outside["credential_id"]}
        for role, wanted in (("admin", both), ("operator", {inside["credential_id"]})):
            figures = (
                await stack.api.get("/v1/dashboard", headers=bearer(world.tokens[role]))
            ).json()
            ids = {c["credential_id"] for c in figures["out_of_sync"]}
            assert ids & both == wanted, role
    finally:
        with Session(stack.engine) as db:
            for credential_id in (inside["credential_id"], outside["credential_id"]):
                row = db.get(Credential, credential_id)
                assert row is not None
                row.sync_state = SyncState.IN_SYNC
                db.add(row)
            db.commit()
    for role, status in (("operator", 200), ("auditor", 200), ("app", 403), ("approver", 403)):
        decoded = await stack.api.post(
            "/codec/decode", json={"payloads": []}, headers=bearer(world.tokens[role])
        )
        assert decoded.status_code == status, (role, decoded.text)
    refused = await stack.api.post("/codec/decode", json={"payloads": []}, headers=bearer("x"))
    assert refused.status_code == 401

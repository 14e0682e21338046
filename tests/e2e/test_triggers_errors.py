"""What a user can get wrong with triggers, and Temporal being unavailable, gets an RFC 9457
problem and changes nothing; the operations list pages newest first; the OpenAPI lists every
answer of the new routes."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import Session, SQLModel, select
from temporalio.client import Client

from requesting import InvalidRequest, OperationRequest, request_operation
from starter.app import create_app
from store.models import AuditEvent, CredentialSession, Operation, Policy
from tests.e2e.conftest import ADMIN_TOKEN, PolicyFactory, Stack
from tests.e2e.helpers import credential, ssh_device
from tests.e2e.trigger_helpers import schedule_exists
from tests.servers.sshd import Sshd, Users
from workflows.contracts import CLIENT_TRIGGERS, TRIGGERS

SECRET = "s3cret-trig"


def _counts(stack: Stack) -> dict[str, int]:
    tables: list[type[SQLModel]] = [Policy, Operation, AuditEvent, CredentialSession]
    with Session(stack.engine) as session:
        counts = {
            t.__name__: session.exec(select(func.count()).select_from(t)).one() for t in tables
        }
        # A refused call is itself an audit event (api.refused); anything else would be a change.
        refused = (
            select(func.count()).select_from(AuditEvent).where(AuditEvent.event == "api.refused")
        )
        counts["AuditEvent"] -= session.exec(refused).one()
        return counts


def _problem(response: httpx.Response, status: int, hint: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert hint in body["detail"], body
    assert SECRET not in str(body)
    return body


async def test_system_triggers_cannot_be_claimed_by_a_request(stack: Stack, sshd: Sshd) -> None:
    device = await ssh_device(stack, sshd)
    cred = await credential(stack, device["id"], "u", SECRET)
    before = _counts(stack)
    path = f"/v1/credentials/{cred['id']}/operations"
    for trigger in ("expiry", "view", "verify-schedule", "parent-changed"):
        body = _problem(
            await stack.api.post(path, json={"kind": "change", "trigger": trigger}), 422, trigger
        )
        assert "set by Keyturn alone" in body["detail"]
    _problem(await stack.api.post(path, json={"kind": "change", "trigger": "whenever"}), 422)
    # The request path itself refuses what is not in the closed lists, whoever calls it.
    for kind, trigger in (("change", "whenever"), ("dance", "manual")):
        with pytest.raises(InvalidRequest):
            await request_operation(
                stack.engine,
                stack.client,
                stack.settings.task_queue,
                OperationRequest(cred["id"], kind, trigger),
            )
    assert _counts(stack) == before


async def test_invalid_trigger_settings_are_refused(
    stack: Stack, scheduled_policy: PolicyFactory
) -> None:
    existing = await scheduled_policy(change_every_seconds=3600)
    before = _counts(stack)
    window = {"start": "22:00", "end": "02:00", "timezone": "Europe/Lisbon"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"change_every_seconds": 5}, "change_every_seconds"),
        ({"verify_every_seconds": 0}, "verify_every_seconds"),
        ({"jitter_seconds": -1}, "jitter_seconds"),
        ({"change_after_view_seconds": -1}, "change_after_view_seconds"),
        ({"change_window": {**window, "timezone": "Mars/Olympus"}}, "timezone"),
        ({"change_window": {**window, "days": ["someday"]}}, "days"),
        ({"change_window": {**window, "days": []}}, "days"),
        ({"change_window": {**window, "start": "25:00"}}, "start"),
        ({"change_window": {"start": "22:00"}}, "end"),
    ]
    for fields, hint in cases:
        name = f"bad-{secrets.token_hex(3)}"
        _problem(await stack.api.post("/v1/policies", json={"name": name, **fields}), 422, hint)
        patch = await stack.api.patch(f"/v1/policies/{existing['id']}", json=fields)
        _problem(patch, 422, hint)
    _problem(await stack.api.patch("/v1/policies/nope", json={"paused": True}), 404, "nope")
    other = await scheduled_policy()
    before["Policy"] += 1
    before["AuditEvent"] += 1  # its creation is a configuration change on the audit trail
    taken = await stack.api.patch(f"/v1/policies/{existing['id']}", json={"name": other["name"]})
    _problem(taken, 409, other["name"])
    assert _counts(stack) == before
    assert await stack.get(f"/v1/policies/{existing['id']}") == existing
    assert await schedule_exists(stack, "expiry", existing["id"])
    assert not await schedule_exists(stack, "verify", existing["id"])


async def test_bad_views_and_session_events_are_refused(stack: Stack, sshd: Sshd) -> None:
    device = await ssh_device(stack, sshd)
    cred = await credential(stack, device["id"], "u", SECRET)
    events = f"/v1/credentials/{cred['id']}/events"
    await stack.post(events, {"event": "session-start", "session_id": "open"}, expect=200)
    await stack.post(events, {"event": "session-start", "session_id": "done"}, expect=200)
    await stack.post(events, {"event": "session-end", "session_id": "done"}, expect=200)
    before = _counts(stack)

    _problem(await stack.api.get("/v1/credentials/nope/secret"), 404, "nope")
    bad_event = {"event": "session-start", "session_id": "x"}
    _problem(await stack.api.post("/v1/credentials/nope/events", json=bad_event), 404, "nope")
    _problem(await stack.api.post(events, json={"event": "login", "session_id": "x"}), 422)
    _problem(await stack.api.post(events, json={"event": "session-end", "session_id": ""}), 422)
    again = {"event": "session-start", "session_id": "open"}
    _problem(await stack.api.post(events, json=again), 409, "is open")
    restart = {"event": "session-start", "session_id": "done"}
    _problem(await stack.api.post(events, json=restart), 409, "has ended")
    never = {"event": "session-end", "session_id": "never"}
    _problem(await stack.api.post(events, json=never), 409, "never started")
    twice = {"event": "session-end", "session_id": "done"}
    _problem(await stack.api.post(events, json=twice), 409, "ended already")
    assert _counts(stack) == before


async def test_bad_operation_searches_are_refused(stack: Stack) -> None:
    for params, hint in (
        ({"trigger": "whenever"}, "trigger"),
        ({"kind": "dance"}, "kind"),
        ({"status": "sleeping"}, "status"),
        ({"cursor": "not a cursor"}, "cursor"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
    ):
        _problem(await stack.api.get("/v1/operations", params=params), 422, hint)


async def test_operations_are_listed_newest_first_a_page_at_a_time(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    device = await ssh_device(stack, sshd)
    cred = await credential(stack, device["id"], ssh_users.create(SECRET), SECRET)
    ran = [await stack.run_operation(cred["id"], "verify") for _ in range(3)]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"device_id": device["id"], "limit": "2", **({"cursor": cursor} if cursor else {})}
        page = await stack.get(f"/v1/operations?{httpx.QueryParams(params)}")
        seen += [o["id"] for o in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [o["id"] for o in reversed(ran)]
    manual = await stack.get(f"/v1/operations?credential_id={cred['id']}&trigger=manual")
    assert len(manual["items"]) == 3 and manual["next_cursor"] is None
    assert (await stack.get(f"/v1/operations?credential_id={cred['id']}&trigger=expiry")) == {
        "items": [],
        "next_cursor": None,
    }


@pytest.fixture
async def no_temporal(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """The API of the same store whose Temporal refuses everything (a namespace that does not
    exist answers every call with an error, as an unreachable cluster would)."""
    client = await Client.connect(
        stack.client.service_client.config.target_host,
        namespace=f"missing-{secrets.token_hex(4)}",
        data_converter=stack.client.data_converter,
    )
    app = create_app(stack.settings, stack.engine, client)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://keyturn.test",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as api:
        yield api


async def test_when_temporal_refuses_triggers_change_nothing(
    stack: Stack, sshd: Sshd, no_temporal: httpx.AsyncClient, scheduled_policy: PolicyFactory
) -> None:
    rules = await scheduled_policy(change_after_view_seconds=60, change_after_session_seconds=60)
    device = await ssh_device(stack, sshd)
    cred = await credential(stack, device["id"], "u", SECRET, policy_id=rules["id"])
    events = f"/v1/credentials/{cred['id']}/events"
    await stack.post(events, {"event": "session-start", "session_id": "s"}, expect=200)
    before = _counts(stack)

    name = f"never-{secrets.token_hex(3)}"
    body = {"name": name, "change_every_seconds": 3600}
    _problem(await no_temporal.post("/v1/policies", json=body), 503, "schedules")
    patch = {"verify_every_seconds": 3600}
    _problem(await no_temporal.patch(f"/v1/policies/{rules['id']}", json=patch), 503)
    _problem(await no_temporal.get(f"/v1/credentials/{cred['id']}/secret"), 503)
    end = {"event": "session-end", "session_id": "s"}
    _problem(await no_temporal.post(events, json=end), 503)

    after = _counts(stack)
    # The undone session end is on the audit trail; nothing else moved.
    assert after == {**before, "AuditEvent": before["AuditEvent"] + 2}
    assert await stack.get(f"/v1/policies/{rules['id']}") == rules
    with Session(stack.engine) as session:
        session_row = session.get(CredentialSession, (cred["id"], "s"))
        assert session_row is not None and session_row.ended_at is None
        assert not session.exec(select(Policy).where(Policy.name == name)).first()
        viewed = session.exec(select(AuditEvent).where(AuditEvent.event == "secret.viewed"))
        assert all(e.credential_id != cred["id"] for e in viewed)


async def test_the_openapi_lists_every_answer_of_the_trigger_routes(stack: Stack) -> None:
    paths = (await stack.get("/openapi.json"))["paths"]
    expected = {
        ("/v1/credentials/{credential_id}/secret", "get"): {
            "401",
            "200",
            "404",
            "409",
            "422",
            "503",
        },
        ("/v1/credentials/{credential_id}/events", "post"): {
            "401",
            "200",
            "404",
            "409",
            "422",
            "503",
        },
        ("/v1/policies", "post"): {"401", "201", "409", "422", "503"},
        ("/v1/policies/{policy_id}", "patch"): {"401", "200", "404", "409", "422", "503"},
        ("/v1/operations", "get"): {"401", "200", "422"},
        ("/v1/credentials/{credential_id}/operations", "post"): {
            "401",
            "200",
            "202",
            "404",
            "422",
            "503",
        },
    }
    # Every route takes the token: 401 is on each (starter/app.py).
    # A body over 1 MiB: any /v1 route (starter/limits.py); a role the route does not admit
    # (starter/authz.py); a body that is not JSON, on a route that takes one.
    every_route = {"403", "413"}
    for (path, method), codes in expected.items():
        body = {"400"} if method in ("post", "patch") else set()  # a body that is not JSON
        assert set(paths[path][method]["responses"]) == codes | every_route | body, (path, method)
    schemas = (await stack.get("/openapi.json"))["components"]["schemas"]
    assert schemas["OperationIn"]["properties"]["trigger"]["enum"] == list(CLIENT_TRIGGERS)
    assert schemas["OperationOut"]["properties"]["trigger"]["enum"] == list(TRIGGERS)

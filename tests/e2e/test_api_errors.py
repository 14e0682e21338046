"""Bad input gets a clear RFC 9457 problem and stores nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from sqlalchemy import func
from sqlmodel import Session, SQLModel, select

from store.models import Credential, Device, Operation, Policy, Template
from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, ssh_device
from tests.servers.sshd import Sshd

BAD_TEMPLATE = "spawn: passwd\nexpect: (?i)current password:\nsend: {{ current_password }\n"


def _counts(stack: Stack) -> dict[str, int]:
    tables: list[type[SQLModel]] = [Device, Policy, Template, Credential, Operation]
    with Session(stack.engine) as session:
        return {t.__name__: session.exec(select(func.count()).select_from(t)).one() for t in tables}


def _problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


async def test_unknown_ids_are_404(stack: Stack) -> None:
    before = _counts(stack)
    for path in ("/v1/devices/nope", "/v1/operations/nope", "/v1/credentials/nope"):
        body = _problem(await stack.api.get(path), 404)
        assert "nope" in str(body["detail"])
    response = await stack.api.post("/v1/credentials/nope/operations", json={"kind": "change"})
    _problem(response, 404)
    assert _counts(stack) == before


async def test_invalid_bodies_are_422_and_store_nothing(stack: Stack, sshd: Sshd) -> None:
    device = await ssh_device(stack, sshd)
    before = _counts(stack)
    cases = [
        ("/v1/devices", {"name": "x", "address": "127.0.0.1", "port": 70000}, "port"),
        ("/v1/devices", {"name": "y", "address": "127.0.0.1", "port": 22}, "host_keys"),
        (
            "/v1/devices",
            {"name": "z", "address": "127.0.0.1", "host_keys": ["not a key"]},
            "host_keys.0",
        ),
        ("/v1/devices", {"name": "w", "address": "h", "executor": "telnet"}, "executor"),
        ("/v1/policies", {"name": "p", "length": 4}, "length"),
        (
            "/v1/policies",
            {
                "name": "q",
                "lowercase": False,
                "uppercase": False,
                "digits": False,
                "symbols": False,
            },
            "character class",
        ),
        (
            "/v1/credentials",
            {"device_id": "missing", "username": "u", "password": "s3cret-x"},
            "device_id",
        ),
        (
            "/v1/credentials",
            {
                "device_id": device["id"],
                "username": "u",
                "password": "s3cret-x",
                "change_template": "ssh/nope",
            },
            "change_template",
        ),
        (
            "/v1/credentials",
            {
                "device_id": device["id"],
                "username": "u",
                "password": "s3cret-x",
                "change_template": "ssh/linux-chpasswd",
            },
            "auth_credential_id",
        ),
        (
            "/v1/credentials",
            {
                "device_id": device["id"],
                "username": "u",
                "password": "s3cret-x",
                "change_template": "ssh/verify-login",
            },
            "not a change template",
        ),
    ]
    for path, payload, hint in cases:
        body = _problem(await stack.api.post(path, json=payload), 422)
        assert hint in str(body["detail"]), (path, body)
        assert "s3cret-x" not in str(body)  # a password is never echoed back
    cred = await credential(stack, device["id"], "u", "s3cret-x")
    body = _problem(
        await stack.api.post(f"/v1/credentials/{cred['id']}/operations", json={"kind": "dance"}),
        422,
    )
    assert "kind" in str(body["detail"])
    after = _counts(stack)
    assert after == {**before, "Credential": before["Credential"] + 1}


async def test_a_template_that_does_not_parse_is_rejected_with_its_line(stack: Stack) -> None:
    before = _counts(stack)
    response = await stack.api.post(
        "/v1/templates", json={"name": "broken", "kind": "change", "body": BAD_TEMPLATE}
    )
    body = _problem(response, 422)
    assert "line 3" in str(body["detail"])
    unknown = await stack.api.post(
        "/v1/templates", json={"name": "odd", "kind": "change", "body": "spawn: x\nfrobnicate: 1"}
    )
    assert "line 2" in str(_problem(unknown, 422)["detail"])
    # A filter that escapes for another context than the place it is used in.
    misplaced = await stack.api.post(
        "/v1/templates",
        json={
            "name": "misplaced",
            "kind": "change",
            "executor": "winrm",
            "body": "$u = 'x'\nSet-Pw {{ new_password | sql_literal }}\n",
        },
    )
    detail = str(_problem(misplaced, 422)["detail"])
    assert "line 2" in detail and "sql_literal" in detail
    assert _counts(stack) == before


async def test_templates_are_versioned_and_shipped_ones_protected(stack: Stack) -> None:
    body = "exec: id -un\nexpect: {{ username | regex }}\nexit: 0\n"
    first = await stack.post("/v1/templates", {"name": "mine", "kind": "verify", "body": body})
    second = await stack.post("/v1/templates", {"name": "mine", "kind": "verify", "body": body})
    assert (first["version"], second["version"]) == (1, 2)
    shipped = await stack.api.post(
        "/v1/templates", json={"name": "ssh/linux-passwd", "kind": "change", "body": body}
    )
    _problem(shipped, 409)
    names = {t["name"] for t in (await stack.api.get("/v1/templates")).json()["items"]}
    assert {"ssh/linux-passwd", "ssh/linux-chpasswd", "ssh/verify-login", "mine"} <= names


async def test_requests_without_the_token_are_401(stack: Stack) -> None:
    async with httpx.AsyncClient(
        transport=stack.api._transport, base_url="http://keyturn.test"
    ) as anonymous:
        _problem(await anonymous.get("/v1/devices"), 401)
        wrong = await anonymous.get("/v1/devices", headers={"Authorization": "Bearer wrong"})
        _problem(wrong, 401)


async def test_a_body_over_1_mib_is_refused_with_413_and_changes_nothing(stack: Stack) -> None:
    before = _counts(stack)
    body = {"name": "huge", "kind": "change", "body": "exec: true\n" + "#" * (1024 * 1024)}
    declared = await stack.api.post("/v1/templates", json=body)  # says its length up front
    assert "1048576 bytes" in str(_problem(declared, 413)["detail"])

    async def chunks() -> AsyncIterator[bytes]:  # streamed: no length up front
        for _ in range(17):
            yield b" " * 65536

    streamed = await stack.api.post(
        "/v1/templates", content=chunks(), headers={"Content-Type": "application/json"}
    )
    _problem(streamed, 413)
    assert _counts(stack) == before
    # Under the cap, the route's own validation answers (a template body holds 100 000 chars).
    under = {"name": "big", "kind": "change", "body": "exec: true\n" + "#" * 900_000}
    assert "body" in str(_problem(await stack.api.post("/v1/templates", json=under), 422))
    assert _counts(stack) == before


async def test_healthz_answers_without_a_token_and_the_openapi_lists_401_and_413(
    stack: Stack,
) -> None:
    anonymous = await stack.api.get("/healthz", headers={"Authorization": ""})
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok"}
    assert (await stack.api.get("/v1/devices", headers={"Authorization": ""})).status_code == 401
    spec = (await stack.api.get("/openapi.json")).json()
    for path, methods in spec["paths"].items():
        if path.startswith("/v1/"):
            for method, operation in methods.items():
                assert {"401", "413"} <= set(operation["responses"]), (method, path)
    assert "/healthz" in spec["paths"]


async def test_every_error_answer_in_the_openapi_is_a_problem(stack: Stack) -> None:
    spec = (await stack.api.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # FastAPI's own 422 body, never sent here
    assert set(schemas["Problem"]["required"]) == {"type", "title", "status", "detail", "instance"}
    errors = 0
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            for status, answer in operation["responses"].items():
                if status[0] in "45":
                    errors += 1
                    assert answer["content"] == {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    }, (method, path, status)
    assert errors > 50
    # And what is sent has the fields the schema requires.
    answer = await stack.api.post("/v1/devices", json={"name": "x"})
    body = answer.json()
    assert answer.status_code == 422 and set(schemas["Problem"]["required"]) <= set(body)
    assert all(set(error) == {"field", "message"} for error in body["errors"])

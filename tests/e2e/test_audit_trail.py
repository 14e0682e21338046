"""The audit trail through the API: every step of an operation, configuration changes and
refused calls, who did each, read in pages; never a secret."""

from __future__ import annotations

import httpx

from store import audit
from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, current_secret, policy, ssh_device
from tests.e2e.secrets_search import assert_no_secret
from tests.servers.sshd import Sshd, Users

OLD = 'Aud1t!old=secret|with\\odd"chars'


async def test_an_operation_and_its_configuration_are_audited(
    stack: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    pol = await policy(stack)
    cred = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])
    operation = await stack.run_operation(cred["id"])
    assert operation["status"] == "succeeded"

    page = await stack.get(f"/v1/audit?operation_id={operation['id']}")
    events = page["items"]
    names = [e["event"] for e in events]
    for expected in (
        "operation.requested",
        "secret.pending_created",
        "operation.started",
        "secret.read",
        "attempt.change",
        "attempt.verify",
        "operation.succeeded",
    ):
        assert expected in names, names
    assert names.index("operation.requested") < names.index("operation.succeeded")
    assert all(e["principal"] == "admin" for e in events)  # the API's caller asked for it
    assert all(e["device_id"] == device["id"] for e in events)
    assert all(e["credential_id"] == cred["id"] for e in events)
    change = events[names.index("attempt.change")]
    assert (change["outcome"], change["detail"]) == (
        "succeeded",
        {"number": 1, "result": "succeeded"},
    )
    succeeded = events[names.index("operation.succeeded")]
    assert succeeded["outcome"] == "succeeded" and succeeded["detail"]["kind"] == "change"
    ids = [e["id"] for e in events]
    assert ids == sorted(ids)

    mine = (await stack.get(f"/v1/audit?credential_id={cred['id']}&limit=1000"))["items"]
    assert "credential.created" in [e["event"] for e in mine]
    created = (await stack.get("/v1/audit?event=device.created&limit=1000"))["items"]
    assert any(e["device_id"] == device["id"] and e["principal"] == "admin" for e in created)

    everything = (await stack.api.get("/v1/audit?limit=1000")).content
    assert_no_secret(everything, OLD, current_secret(stack, cred["id"]))
    assert audit.verify(stack.engine)[1] is None


async def test_pages_follow_the_cursor(stack: Stack) -> None:
    for _ in range(3):
        await stack.post("/v1/policies", {"name": f"p-{stack.settings.task_queue}-{_}x"})
    first = await stack.get("/v1/audit?event=policy.created&limit=2")
    second = await stack.get(
        f"/v1/audit?event=policy.created&limit=2&cursor={first['next_cursor']}"
    )
    assert len(first["items"]) == 2 and second["items"]
    assert first["items"][-1]["id"] < second["items"][0]["id"]
    last = await stack.get("/v1/audit?limit=1000&since=2000-01-01T00:00:00Z")
    end = await stack.get(f"/v1/audit?cursor={last['next_cursor']}")
    assert end["items"] == [] or end["items"][0]["id"] > last["items"][-1]["id"]


async def test_refused_calls_are_audited_and_bad_filters_refused(stack: Stack) -> None:
    bad = await stack.api.post("/v1/devices", json={"name": "x", "address": "h", "port": 0})
    assert bad.status_code == 422
    async with httpx.AsyncClient(
        transport=stack.api._transport, base_url="http://keyturn.test"
    ) as anonymous:
        assert (await anonymous.get("/v1/audit")).status_code == 401
    refused = (await stack.get("/v1/audit?event=api.refused&limit=1000"))["items"]
    by_status = {(e["detail"]["status"], e["principal"], e["detail"]["path"]) for e in refused}
    assert (422, "admin", "/v1/devices") in by_status
    assert (401, "anonymous", "/v1/audit") in by_status
    assert all(e["outcome"] == "refused" for e in refused)

    before = (await stack.get("/v1/audit?limit=1000&event=policy.created"))["items"]
    for query in ("cursor=abc", "limit=0", "limit=5000", "since=yesterday"):
        response = await stack.api.get(f"/v1/audit?{query}")
        assert response.status_code == 422, query
        assert response.headers["content-type"] == "application/problem+json"
    after = (await stack.get("/v1/audit?limit=1000&event=policy.created"))["items"]
    assert after == before  # refusing changed nothing but the record of refusals

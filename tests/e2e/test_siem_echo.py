"""The SIEM echo, received by a real rsyslog over UDP, TCP and TLS in each format, parsed back;
and with rsyslog down during 20 operations, nothing sent over TCP or TLS is lost."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlmodel import Session
from temporalio.testing import WorkflowEnvironment

from governance.siem import endpoint
from keyturn.settings import SiemDestination
from starter.ca_commands import init_ca
from store.models import Certificate, CertificateAuthority, SiemCursor
from store.vault import Vault, ca_owner, certificate_owner
from tests.e2e.conftest import Stack, running_stack
from tests.e2e.helpers import credential, current_secret, policy, ssh_device
from tests.e2e.metrics_scraping import scrape, value
from tests.e2e.secrets_search import assert_no_secret
from tests.e2e.siem_parsing import audit_id, cef, format_of, leef, structured_data, syslog
from tests.servers.rsyslog import TRANSPORTS, Rsyslog
from tests.servers.sshd import Sshd, Users

FORMATS = ("rfc5424", "cef", "leef")
OLD = 'Si3m|old=pw\\"]x'
ARRIVAL_DEADLINE = 60.0


@pytest.fixture(scope="module")
async def siem_stack(
    temporal: WorkflowEnvironment, rsyslog: Rsyslog, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    destinations = [
        {"url": rsyslog.url(t), "format": f, "ca_file": str(rsyslog.ca_file)}
        for t in TRANSPORTS
        for f in FORMATS
    ]
    async with running_stack(
        temporal, tmp_path_factory.mktemp("siem"), siem_destinations=destinations
    ) as stack:
        keys = [endpoint(SiemDestination.model_validate(d)).key for d in destinations]
        await _until_every_cursor_exists(stack, keys)
        yield stack


async def _until_every_cursor_exists(stack: Stack, keys: list[str]) -> None:
    """A destination seen for the first time starts at the trail's end, so an event recorded
    before its sender's first look is, rightly, never its to send: the tests count only what
    came after every destination had its cursor."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ARRIVAL_DEADLINE
    while True:
        with Session(stack.engine) as db:
            missing = [k for k in keys if db.get(SiemCursor, k) is None]
        if not missing:
            return
        assert loop.time() < deadline, missing
        await asyncio.sleep(0.1)


def _ids(rsyslog: Rsyslog, transport: str, fmt: str) -> list[int]:
    return [audit_id(line) for line in rsyslog.received(transport) if format_of(line) == fmt]


async def _until_received(rsyslog: Rsyslog, transports: tuple[str, ...], wanted: set[int]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ARRIVAL_DEADLINE
    while True:
        missing = {
            (t, f): sorted(wanted - set(_ids(rsyslog, t, f))) for t in transports for f in FORMATS
        }
        if not any(missing.values()):
            return
        assert loop.time() < deadline, {k: v[:5] for k, v in missing.items() if v}
        await asyncio.sleep(0.1)


async def _audit_ids(stack: Stack, **filters: str) -> list[int]:
    query = "&".join(f"{k}={v}" for k, v in filters.items())
    return [e["id"] for e in (await stack.get(f"/v1/audit?limit=1000&{query}"))["items"]]


async def test_an_operation_is_echoed_in_every_format_over_every_transport(
    siem_stack: Stack, rsyslog: Rsyslog, sshd: Sshd, ssh_users: Users
) -> None:
    stack = siem_stack
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    pol = await policy(stack)
    cred = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])
    operation = await stack.run_operation(cred["id"])
    assert operation["status"] == "succeeded"
    events = (await stack.get(f"/v1/audit?operation_id={operation['id']}"))["items"]
    by_id = {e["id"]: e for e in events}
    await _until_received(rsyslog, TRANSPORTS, set(by_id))

    finished = next(e for e in events if e["event"] == "operation.succeeded")
    for transport in TRANSPORTS:
        lines = [m for m in rsyslog.received(transport) if audit_id(m) in by_id]
        for line in lines:
            header, rest = syslog(line)
            assert header["app"] == "keyturn" and int(header["pri"]) // 8 == 10  # authpriv
            event = by_id[audit_id(line)]
            assert header["msgid"] == event["event"]
            fmt = format_of(line)
            if fmt == "rfc5424":
                sd_id, params = structured_data(rest)
                assert sd_id == "keyturn@32473"
                assert params["operationId"] == operation["id"]
                assert params["credentialId"] == cred["id"]
                assert params["username"] == user and params["principal"] == "admin"
                assert params["event"] == event["event"] and params["kind"] == "change"
            elif fmt == "cef":
                head, ext = cef(rest[2:])
                assert head[1:4] == ["Keyturn", "Keyturn", "0.1.0"] and head[4] == event["event"]
                assert ext["act"] == "change" and ext["duser"] == user
                assert ext["dhost"] == device["name"] and ext["dst"] == "127.0.0.1"
                assert ext["suser"] == "admin" and ext["outcome"] == event["outcome"]
                assert (ext["cs1Label"], ext["cs1"]) == ("Operation", operation["id"])
                assert (ext["cs2Label"], ext["cs2"]) == ("Credential", cred["id"])
                assert ext["cs4"] == str(event["id"]) == ext["externalId"]
                if event["id"] == finished["id"]:
                    assert ext["reason"] == finished["detail"]["resolution"]
                    assert head[6] == "3"  # a success is low severity
            else:
                head, attrs = leef(rest[2:])
                assert head[1:5] == ["Keyturn", "Keyturn", "0.1.0", event["event"]]
                assert attrs["accountName"] == user and attrs["usrName"] == "admin"
                assert attrs["operationId"] == operation["id"] and attrs["action"] == "change"
        assert_no_secret(
            "\n".join(rsyslog.received(transport)), OLD, current_secret(stack, cred["id"])
        )


async def test_nothing_is_lost_over_tcp_and_tls_while_the_receiver_is_down(
    siem_stack: Stack, rsyslog: Rsyslog, sshd: Sshd, ssh_users: Users
) -> None:
    stack = siem_stack
    # Every cursor exists (the fixture waited): what is recorded from here on goes everywhere.
    first_here = max(await _audit_ids(stack), default=0) + 1
    device = await ssh_device(stack, sshd, max_concurrent_operations=10)
    pol = await policy(stack)
    creds: list[dict[str, Any]] = []
    for _ in range(10):
        password = f"Out-{secrets.token_hex(6)}"
        user = ssh_users.create(password)
        creds.append(await credential(stack, device["id"], user, password, policy_id=pol["id"]))
    # Everything so far delivered and counted as such: what follows is the outage's alone.
    first_during = max(await _audit_ids(stack)) + 1
    await _until_received(rsyslog, ("tcp", "tls"), set(range(first_here, first_during)))
    await _until_delivered(stack, rsyslog)
    before = {(t, f): len(_ids(rsyslog, t, f)) for t in ("tcp", "tls") for f in FORMATS}

    rsyslog.stop()
    try:
        # 20 operations: a change and a verify on each credential, all requested at once.
        accepted = await asyncio.gather(
            *(
                stack.api.post(f"/v1/credentials/{c['id']}/operations", json={"kind": kind})
                for c in creds
                for kind in ("change", "verify")
            )
        )
        assert all(r.status_code == 202 for r in accepted), [r.text for r in accepted]
        for response in accepted:
            await stack.client.get_workflow_handle(response.json()["workflow_id"]).result()
        for response in accepted:
            done = await stack.get(f"/v1/operations/{response.json()['operation_id']}")
            assert done["status"] == "succeeded", done  # the echo never holds an operation up
        samples = await scrape(stack)
        for transport in ("tcp", "tls"):
            key = f"{rsyslog.url(transport)}|cef"
            assert value(samples, "keyturn_siem_outbox_depth", destination=key) > 0
    finally:
        rsyslog.start()

    wanted = set(range(first_during, max(await _audit_ids(stack)) + 1))
    await _until_received(rsyslog, ("tcp", "tls"), wanted)
    for (transport, fmt), count in before.items():
        after = _ids(rsyslog, transport, fmt)[count:]
        assert wanted <= set(after), (transport, fmt)
        # In order, each id once, except a replay from the last delivered event when the
        # connection came back: one restart at most, itself in order.
        restarts, seen, first_seen, previous = 0, set(), [], first_during - 1
        for event_id in after:
            if event_id <= previous:
                restarts += 1
                assert event_id in seen, (transport, fmt, after[:20])
            else:
                assert event_id == previous + 1, (transport, fmt, after[:20])  # no gap
            if event_id not in seen:
                seen.add(event_id)
                first_seen.append(event_id)
            previous = event_id
        assert restarts <= 1, (transport, fmt, after[:20])
        assert first_seen == sorted(first_seen)


async def _until_delivered(stack: Stack, rsyslog: Rsyslog) -> None:
    """Wait until no TCP or TLS destination has an event waiting in the outbox."""
    keys = [f"{rsyslog.url(t)}|{f}" for t in ("tcp", "tls") for f in FORMATS]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ARRIVAL_DEADLINE
    while True:
        samples = await scrape(stack)
        depths = {k: value(samples, "keyturn_siem_outbox_depth", destination=k) for k in keys}
        if not any(depths.values()):
            return
        assert loop.time() < deadline, depths
        await asyncio.sleep(0.1)


async def test_a_certificates_actions_are_echoed_without_its_keys(
    siem_stack: Stack, rsyslog: Rsyslog
) -> None:
    """cert-request, cert-sign and cert-revoke are operations like any other: their audit
    events reach the SIEM, in every format, and no private key goes with them."""
    stack = siem_stack
    ca = f"ca-{secrets.token_hex(4)}"
    await asyncio.to_thread(init_ca, stack.settings, ca, "internal", {})
    created = await stack.post(
        "/v1/certificates",
        {"name": f"siem-{secrets.token_hex(4)}", "subject": "CN=siem", "validity_days": 1,
         "ca": ca},
    )  # fmt: skip
    await asyncio.wait_for(
        stack.client.get_workflow_handle(created["workflow_id"]).result(), ARRIVAL_DEADLINE
    )
    revoking = await stack.post(
        f"/v1/certificates/{created['id']}/revoke", {"reason": "superseded"}, expect=202
    )
    await asyncio.wait_for(
        stack.client.get_workflow_handle(revoking["workflow_id"]).result(), ARRIVAL_DEADLINE
    )
    operations = (await stack.get(f"/v1/operations?certificate_id={created['id']}"))["items"]
    assert {o["kind"] for o in operations} == {"cert-request", "cert-sign", "cert-revoke"}
    wanted: set[int] = set()
    for operation in operations:
        wanted |= set(await _audit_ids(stack, operation_id=operation["id"]))
    events = {e["event"] for e in (await stack.get("/v1/audit?limit=1000"))["items"]
              if e["id"] in wanted}  # fmt: skip
    assert {"certificate.issued", "certificate.revoked", "operation.succeeded"} <= events
    await _until_received(rsyslog, TRANSPORTS, wanted)
    with Session(stack.engine) as db:
        row = db.get(CertificateAuthority, ca)
        certificate = db.get(Certificate, created["id"])
        assert row is not None and row.key_id and row.key_ciphertext is not None
        assert certificate is not None and certificate.key_id and certificate.key_ciphertext
        vault = Vault(stack.settings.keyring)
        keys = [
            vault.unseal(ca_owner(ca), row.key_id, row.key_ciphertext),
            vault.unseal(certificate_owner(certificate.id), certificate.key_id,
                         certificate.key_ciphertext),
        ]  # fmt: skip
    received = "\n".join(m for t in TRANSPORTS for m in rsyslog.received(t))
    for key in keys:
        body = "".join(line for line in key.splitlines() if not line.startswith("-----"))
        assert_no_secret(received, body[:64], key)

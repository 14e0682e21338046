"""Certificates end to end, against real servers: requested (key and CSR made by Keyturn),
approved by someone other than the requester, signed by the internal CA (made by
``keyturn ca init``), published over SSH (the session's sshd) to a real nginx that is reloaded
and serves it, renewed by the renewal schedule when due, revoked into a CRL that the real
``openssl crl`` parses. Plus bad input, one action at a time, and no private key anywhere."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from sqlmodel import Session, col, select
from temporalio.client import WorkflowFailureError
from temporalio.worker import Replayer

from starter.cli import main
from store.models import (
    AuditEvent,
    Certificate,
    CertificateAuthority,
    Operation,
    utcnow,
)
from store.vault import Vault, ca_owner
from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, ssh_device
from tests.e2e.leaks import assert_not_in_histories, assert_not_in_logs, assert_not_in_store
from tests.e2e.secrets_search import assert_no_secret
from tests.e2e.test_principals import bearer, make_principal
from tests.servers.nginx import Nginx
from tests.servers.sshd import Sshd, Users
from workflows.certificate import CertificateWorkflow

DEADLINE = 60.0


async def init_ca(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[str, str]:
    """``keyturn ca init`` on the stack's store (in a thread: the command runs its own event
    loop); the CA's name and certificate."""
    name = f"ca-{secrets.token_hex(4)}"
    monkeypatch.setenv("KEYTURN_DATA_DIR", str(stack.settings.data_dir))
    monkeypatch.setenv("KEYTURN_DATABASE_URL", stack.settings.resolved_database_url)
    monkeypatch.setenv("KEYTURN_MASTER_KEY", stack.settings.master_key or "")
    capsys.readouterr()
    exited = await asyncio.to_thread(
        _exit_code, ["ca", "init", "--name", name, "--subject", f"CN=Keyturn test {name}"]
    )
    assert exited == 0
    pem = capsys.readouterr().out
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    assert await asyncio.to_thread(_exit_code, ["ca", "init", "--name", name]) == 1  # taken
    return name, pem


def _exit_code(argv: list[str]) -> int | str | None:
    try:
        main(argv)
    except SystemExit as exited:
        return exited.code
    return None


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until it holds, or fail after DEADLINE seconds."""
    deadline = time.monotonic() + DEADLINE
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def ended(stack: Stack, workflow_id: str) -> Any:
    """The workflow's result, or a failure after DEADLINE seconds rather than a hung test."""
    handle = stack.client.get_workflow_handle(workflow_id)
    return await asyncio.wait_for(handle.result(), DEADLINE)


async def status_is(stack: Stack, certificate_id: str, status: str) -> None:
    async def check() -> bool:
        shown: str = (await stack.get(f"/v1/certificates/{certificate_id}"))["status"]
        return shown == status

    await until(check, f"certificate {certificate_id} to be {status}")


def served_certificate(port: int, ca_pem: str) -> x509.Certificate:
    """Connect as a client that trusts only the CA, checking the chain and the host name."""
    context = ssl.create_default_context(cadata=ca_pem)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def serves(port: int, ca_pem: str, serial: str) -> x509.Certificate:
    """The certificate served once ``serial`` is: Keyturn saw it served, but until nginx's old
    workers have taken their leave a new connection may still reach one of them."""
    found: list[x509.Certificate] = []

    async def check() -> bool:
        try:
            served = await asyncio.to_thread(served_certificate, port, ca_pem)
        except ssl.SSLCertVerificationError:
            return False  # an old worker's certificate, from no CA of this test
        found.append(served)
        return f"{served.serial_number:X}" == serial

    await until(check, f"port {port} to serve certificate {serial}")
    return found[-1]


async def approve(stack: Stack, certificate_id: str, approver_token: str) -> None:
    """A request of the admin waits for approval when approvers exist: an approver gives it."""
    await until(
        lambda: _settled(stack, certificate_id), f"certificate {certificate_id} to be requested"
    )
    shown = await stack.get(f"/v1/certificates/{certificate_id}")
    if shown["status"] == "awaiting_approval":
        answer = await stack.api.post(
            f"/v1/certificates/{certificate_id}/approve", json={},
            headers=bearer(approver_token),
        )  # fmt: skip
        assert answer.status_code == 200, answer.text


async def _settled(stack: Stack, certificate_id: str) -> bool:
    shown = await stack.get(f"/v1/certificates/{certificate_id}")
    status: str = shown["status"]
    return status in ("awaiting_approval", "issued", "failed")


@pytest.fixture
async def approver(stack: Stack) -> str:
    return str((await make_principal(stack, "approver", profiles=["default"]))["token"])


async def test_a_certificate_is_requested_approved_signed_published_renewed_and_revoked(
    stack: Stack,
    sshd: Sshd,
    nginx: Nginx,
    approver: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    keyturn_logs: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    ca, ca_pem = await init_ca(stack, monkeypatch, capsys)
    device = await ssh_device(stack, sshd)
    account = await credential(stack, device["id"], nginx.user, nginx.password)
    answers: list[httpx.Response] = []
    stack.api.event_hooks["response"] = [_keep(answers)]
    try:
        created = await stack.post(
            "/v1/certificates",
            {
                "name": f"web-{secrets.token_hex(4)}",
                "subject": "CN=localhost,O=Keyturn tests",
                "sans": ["localhost", "127.0.0.1"],
                "key_type": "ecdsa-p256",
                "validity_days": 30,
                "ca": ca,
                "renew_before_days": 7,
                "publish_to": [
                    {
                        "device_id": device["id"],
                        "credential_id": account["id"],
                        "cert_path": str(nginx.cert_path),
                        "key_path": str(nginx.key_path),
                        "reload_command": nginx.reload_command,
                        "verify_port": nginx.port,
                    }
                ],
            },
        )
        certificate_id = created["id"]
        assert created["requires_approval"] is True and created["requested_by"] == "admin"
        await status_is(stack, certificate_id, "awaiting_approval")
        # The requester may not approve their own request, even as an admin; nothing moves.
        own = await stack.api.post(f"/v1/certificates/{certificate_id}/approve", json={})
        assert own.status_code == 403, own.text
        assert own.headers["content-type"] == "application/problem+json"
        assert (await stack.get(f"/v1/certificates/{certificate_id}"))["status"] == (
            "awaiting_approval"
        )
        approved = await stack.api.post(
            f"/v1/certificates/{certificate_id}/approve", json={}, headers=bearer(approver)
        )
        assert approved.status_code == 200, approved.text
        outcome = await ended(stack, created["workflow_id"])
        assert outcome["status"] == "succeeded", outcome

        issued = await stack.get(f"/v1/certificates/{certificate_id}")
        assert issued["status"] == "issued" and issued["approved_by"].startswith("approver-")
        assert issued["published_at"] is not None
        # nginx serves it: the chain checks against the CA alone, for the name asked for.
        served = await serves(nginx.port, ca_pem, issued["serial"])
        assert served.subject.rfc4514_string() == "CN=localhost,O=Keyturn tests"
        assert x509.load_pem_x509_certificate(issued["certificate_pem"].encode()) == served
        assert (nginx.key_path.stat().st_mode & 0o777) == 0o600
        assert not list(nginx.dir.glob(".keyturn-*")), "a temp file was left behind"
        key_pem = nginx.key_path.read_text()
        # Each action is an operation of its kind, visible like any other, in order.
        operations = (await stack.get(f"/v1/operations?certificate_id={certificate_id}"))["items"]
        assert [(o["kind"], o["status"]) for o in reversed(operations)] == [
            ("cert-request", "succeeded"), ("cert-sign", "succeeded"),
            ("cert-publish", "succeeded"),
        ]  # fmt: skip
        assert all(o["credential_id"] is None for o in operations)
        published = next(o for o in operations if o["kind"] == "cert-publish")
        assert published["attempts"][0]["outcome"] == "succeeded"
        kinds = (await stack.get("/v1/operations?kind=cert-sign&limit=500"))["items"]
        assert next(o for o in operations if o["kind"] == "cert-sign")["id"] in {
            o["id"] for o in kinds
        }

        # Renewal: make it due (within its renew_before_days); the schedule renews and
        # republishes it, no approval needed for what was approved.
        with Session(stack.engine) as db:
            row = db.get(Certificate, certificate_id)
            assert row is not None
            row.not_after = utcnow() + timedelta(days=2)
            db.add(row)
            db.commit()

        async def renewed() -> bool:
            shown = await stack.get(f"/v1/certificates/{certificate_id}")
            return bool(shown["serial"] != issued["serial"] and shown["published_at"] !=
                        issued["published_at"])  # fmt: skip

        await until(renewed, "the renewal schedule to renew and republish")
        renewal = await stack.get(f"/v1/certificates/{certificate_id}")
        served = await serves(nginx.port, ca_pem, renewal["serial"])
        renewals = (
            await stack.get(
                f"/v1/operations?certificate_id={certificate_id}&trigger=certificate-renewal"
            )  # fmt: skip
        )["items"]
        assert {o["kind"] for o in renewals} == {"cert-request", "cert-sign", "cert-publish"}
        await until(lambda: _idle(stack, certificate_id), "the renewal to end")
        renewed_key = nginx.key_path.read_text()
        assert renewed_key != key_pem

        # Revoke: marked revoked with its reason, and the CA's CRL lists its serial.
        revoking = await stack.post(
            f"/v1/certificates/{certificate_id}/revoke", {"reason": "keyCompromise"}, expect=202
        )
        assert revoking["kind"] == "cert-revoke"
        await ended(stack, revoking["workflow_id"])
        revoked = await stack.get(f"/v1/certificates/{certificate_id}")
        assert (revoked["status"], revoked["revocation_reason"]) == ("revoked", "keyCompromise")
        crl = await stack.api.get(f"/v1/cas/{ca}/crl")
        assert crl.status_code == 200 and crl.headers["content-type"] == "application/pkix-crl"
        (tmp_path / "ca.crl").write_bytes(crl.content)
        (tmp_path / "ca.pem").write_text(ca_pem)
        parsed = await asyncio.to_thread(
            subprocess.run,
            ["openssl", "crl", "-inform", "DER", "-in", str(tmp_path / "ca.crl"), "-noout",
             "-text", "-CAfile", str(tmp_path / "ca.pem")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert f"Serial Number: {revoked['serial']}" in parsed.stdout, parsed.stdout
        assert "Key Compromise" in parsed.stdout
        assert "verify OK" in parsed.stderr + parsed.stdout
        revoke_op = await stack.get(f"/v1/operations/{revoking['operation_id']}")
        assert revoke_op["status"] == "succeeded"
        with Session(stack.engine) as db:
            events = {
                e.event for e in db.exec(select(AuditEvent).where(
                    col(AuditEvent.operation_id).in_([o["id"] for o in operations]
                                                     + [revoking["operation_id"]])))
            }  # fmt: skip
        assert {"certificate.issued", "certificate.approved", "certificate.published",
                "certificate.revoked", "operation.succeeded"} <= events  # fmt: skip
    finally:
        stack.api.event_hooks["response"] = []

    # Every run of its workflow (request with approval, renewal, revocation) replays.
    query = f"WorkflowId = '{created['workflow_id']}'"
    runs: list[Any] = []

    async def listed() -> bool:  # visibility follows the runs' ends closely, not at once
        runs[:] = [r async for r in stack.client.list_workflows(query)]
        return len(runs) == 3

    await until(listed, "the certificate's three runs to be listed")
    replayer = Replayer(workflows=[CertificateWorkflow], data_converter=stack.client.data_converter)
    for run in runs:
        handle = stack.client.get_workflow_handle(run.id, run_id=run.run_id)
        await replayer.replay_workflow(await handle.fetch_history())

    # No private key, the certificate's (either) or the CA's, anywhere it could leak.
    with Session(stack.engine) as db:
        ca_row = db.get(CertificateAuthority, ca)
        assert ca_row is not None and ca_row.key_id and ca_row.key_ciphertext
        ca_key = Vault(stack.settings.keyring).unseal(ca_owner(ca), ca_row.key_id,
                                                       ca_row.key_ciphertext)  # fmt: skip
        trail = json.dumps([e.model_dump(mode="json") for e in db.exec(select(AuditEvent))])
    workflows = [created["workflow_id"]]
    for key in (key_pem, renewed_key, ca_key):
        body = _key_body(key)
        await assert_not_in_histories(stack, workflows, body)
        assert_not_in_logs(keyturn_logs, body)
        assert_not_in_store(stack, body, present=certificate_id)
        assert_no_secret(trail, body, key)
        for answer in answers:
            assert_no_secret(answer.content, body, key)


def _key_body(pem: str) -> str:
    """The base64 of a PEM key, on one line: what any leak of it would contain."""
    return "".join(line for line in pem.splitlines() if not line.startswith("-----"))[:64]


def _keep(answers: list[httpx.Response]) -> Callable[[httpx.Response], Awaitable[None]]:
    async def keep(response: httpx.Response) -> None:
        await response.aread()
        answers.append(response)

    return keep


async def _idle(stack: Stack, certificate_id: str) -> bool:
    with Session(stack.engine) as db:
        running = db.exec(
            select(Operation).where(
                Operation.certificate_id == certificate_id,
                col(Operation.finished_at).is_(None),
            )
        ).all()
    return not running


async def test_bad_certificate_requests_are_refused_and_create_nothing(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ca, _ = await init_ca(stack, monkeypatch, capsys)
    good = {"name": f"bad-{secrets.token_hex(4)}", "subject": "CN=x", "sans": ["x.example"],
            "key_type": "ecdsa-p256", "validity_days": 10, "ca": ca}  # fmt: skip
    with Session(stack.engine) as db:
        before = (len(db.exec(select(Certificate)).all()), len(db.exec(select(Operation)).all()))
    for change, field in (
        ({"ca": "no-such-ca"}, "ca"),
        ({"key_type": "dsa-1024"}, "key_type"),
        ({"sans": ["not a name!"]}, "sans.0"),
        ({"sans": ["-leading.example"]}, "sans.0"),
        ({"validity_days": 0}, "validity_days"),
        ({"validity_days": -5}, "validity_days"),
        ({"subject": "CN="}, "subject"),
        ({"subject": "FOO=bar"}, "subject"),
        (
            {
                "publish_to": [
                    {
                        "device_id": "nope",
                        "credential_id": "nope",
                        "cert_path": "/a.pem",
                        "key_path": "/a.key",
                        "verify_port": 443,
                    }
                ]
            },
            "publish_to.0.device_id",
        ),  # fmt: skip
        (
            {
                "publish_to": [
                    {
                        "device_id": "d",
                        "credential_id": "c",
                        "cert_path": "relative.pem",
                        "key_path": "/a.key",
                        "verify_port": 443,
                    }
                ]
            },
            "publish_to.0.cert_path",
        ),  # fmt: skip
    ):
        answer = await stack.api.post("/v1/certificates", json={**good, **change})
        assert answer.status_code == 422, (change, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert field in {e["field"] for e in answer.json()["errors"]}, answer.json()
    unknown = await stack.api.post("/v1/cas/no-such-ca/crl")
    assert unknown.status_code == 405
    assert (await stack.api.get("/v1/cas/no-such-ca/crl")).status_code == 404
    with Session(stack.engine) as db:
        after = (len(db.exec(select(Certificate)).all()), len(db.exec(select(Operation)).all()))
    assert after == before


async def test_one_action_at_a_time_on_a_certificate(
    stack: Stack, approver: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Actions asked together on one certificate: one runs, the others are answered 409 with
    nothing stored for them (not queued); a busy certificate holds up no other one."""
    ca, _ = await init_ca(stack, monkeypatch, capsys)
    made = [
        await stack.post("/v1/certificates", {"name": f"one-{secrets.token_hex(4)}",
                                              "subject": "CN=one", "validity_days": 5, "ca": ca})
        for _ in range(2)
    ]  # fmt: skip
    for certificate in made:
        await approve(stack, certificate["id"], approver)
        await ended(stack, certificate["workflow_id"])
        await status_is(stack, certificate["id"], "issued")
    target, neighbour = made[0]["id"], made[1]["id"]
    operations_before = _asked(stack, target, neighbour)
    answers = await asyncio.gather(
        stack.api.post(f"/v1/certificates/{target}/renew", json={}),
        stack.api.post(f"/v1/certificates/{target}/renew", json={}),
        stack.api.post(f"/v1/certificates/{target}/revoke", json={"reason": "superseded"}),
        stack.api.post(f"/v1/certificates/{neighbour}/revoke", json={"reason": "superseded"}),
    )
    on_target = sorted(a.status_code for a in answers[:3])
    assert on_target == [202, 409, 409], [a.text for a in answers]
    assert answers[3].status_code == 202, answers[3].text
    busy = next(a for a in answers[:3] if a.status_code == 409)
    assert busy.headers["content-type"] == "application/problem+json"
    assert "one action at a time" in busy.json()["detail"]
    assert _asked(stack, target, neighbour) == operations_before + 2  # the 409s stored nothing
    winner = next(a for a in answers[:3] if a.status_code == 202).json()
    await ended(stack, winner["workflow_id"])
    await ended(stack, answers[3].json()["workflow_id"])
    assert (await stack.get(f"/v1/certificates/{neighbour}"))["status"] == "revoked"
    # Once it ended, the next action runs (a revocation, unless the winner was one).
    if winner["kind"] == "cert-request":
        again = await stack.post(
            f"/v1/certificates/{target}/revoke", {"reason": "superseded"}, expect=202
        )
        await ended(stack, again["workflow_id"])
    assert (await stack.get(f"/v1/certificates/{target}"))["status"] == "revoked"


def _asked(stack: Stack, *certificate_ids: str) -> int:
    """Operations of these certificates that a request made (the ones their workflows add
    after a request, cert-sign and cert-publish, left out)."""
    with Session(stack.engine) as db:
        return len(
            db.exec(
                select(Operation).where(
                    col(Operation.certificate_id).in_(certificate_ids),
                    col(Operation.kind).in_(["cert-request", "cert-revoke"]),
                )
            ).all()
        )


async def test_a_publish_and_a_change_of_the_account_it_logs_in_with_at_once(
    stack: Stack,
    sshd: Sshd,
    nginx: Nginx,
    approver: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A publish asked together with a change of the account it logs in as, on the same device:
    the publish waits while the credential is in an operation (its secret would go stale), takes
    one of the device's slots, and both end succeeded: the new password logs in and nginx serves
    the certificate."""
    ca, ca_pem = await init_ca(stack, monkeypatch, capsys)
    device = await ssh_device(stack, sshd)
    account = await credential(stack, device["id"], nginx.user, nginx.password)
    created = await stack.post(
        "/v1/certificates",
        {"name": f"busy-{secrets.token_hex(4)}", "subject": "CN=localhost",
         "sans": ["localhost"], "validity_days": 3, "ca": ca,
         "publish_to": [{"device_id": device["id"], "credential_id": account["id"],
                         "cert_path": str(nginx.cert_path), "key_path": str(nginx.key_path),
                         "reload_command": nginx.reload_command, "verify_port": nginx.port}]},
    )  # fmt: skip
    await approve(stack, created["id"], approver)
    await ended(stack, created["workflow_id"])
    first = await stack.get(f"/v1/certificates/{created['id']}")
    assert first["status"] == "issued"

    change, publish = await asyncio.gather(
        stack.api.post(f"/v1/credentials/{account['id']}/operations", json={"kind": "change"}),
        stack.api.post(f"/v1/certificates/{created['id']}/publish", json={}),
    )
    assert (change.status_code, publish.status_code) == (202, 202), (change.text, publish.text)
    changed, published = change.json(), publish.json()
    await ended(stack, changed["workflow_id"])
    outcome = await ended(stack, published["workflow_id"])
    assert outcome["status"] == "succeeded", outcome
    assert (await stack.get(f"/v1/operations/{changed['operation_id']}"))["status"] == ("succeeded")
    operation = await stack.get(f"/v1/operations/{published['operation_id']}")
    assert operation["status"] == "succeeded" and operation["kind"] == "cert-publish"
    new_password = (await stack.get(f"/v1/credentials/{account['id']}/secret"))["password"]
    nginx.password = new_password  # what later users of the session's nginx account log in with
    assert new_password and await Users(sshd).password_works(nginx.user, new_password)
    await serves(nginx.port, ca_pem, first["serial"])
    after = await stack.get(f"/v1/certificates/{created['id']}")
    assert after["published_at"] > first["published_at"]


async def test_a_request_waiting_for_approval_is_canceled_and_requested_again(
    stack: Stack, approver: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A request canceled while it waits for approval ends canceled and the certificate failed
    (never signed): it cannot be approved any more, and a renewal requests it again."""
    ca, _ = await init_ca(stack, monkeypatch, capsys)
    created = await stack.post(
        "/v1/certificates",
        {"name": f"cancel-{secrets.token_hex(4)}", "subject": "CN=c", "validity_days": 2,
         "ca": ca},
    )  # fmt: skip
    await status_is(stack, created["id"], "awaiting_approval")
    await stack.post(f"/v1/operations/{created['operation_id']}/cancel", {}, expect=202)
    with pytest.raises(WorkflowFailureError):
        await ended(stack, created["workflow_id"])
    operation = await stack.get(f"/v1/operations/{created['operation_id']}")
    assert (operation["status"], operation["kind"]) == ("canceled", "cert-request")
    assert (await stack.get(f"/v1/certificates/{created['id']}"))["status"] == "failed"
    late = await stack.api.post(
        f"/v1/certificates/{created['id']}/approve", json={}, headers=bearer(approver)
    )
    assert late.status_code == 409, late.text
    again = await stack.post(f"/v1/certificates/{created['id']}/renew", {}, expect=202)
    await status_is(stack, created["id"], "awaiting_approval")  # never approved: asked again
    await approve(stack, created["id"], approver)
    outcome = await ended(stack, again["workflow_id"])
    assert outcome["status"] == "succeeded"
    assert (await stack.get(f"/v1/certificates/{created['id']}"))["status"] == "issued"

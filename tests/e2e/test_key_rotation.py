"""``keyturn rotate-key`` while an operation is in flight: the operation completes, its history
holds payloads of both keys, every secret is sealed with the new key alone, and the old key
is forgotten only once no workflow that used it is open. Real sshd, real Temporal dev server,
the keyring in a file as ``keyturn dev`` keeps it."""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from sqlmodel import Session, select
from temporalio import activity
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

import worker as worker_module
from activities.store_steps import StoreActivities
from keyturn.codec import PURPOSE as PAYLOADS
from keyturn.codec import data_converter
from keyturn.crypto import Cipher
from keyturn.keyring import Keyring
from starter.key_rotation import RotationRefused, forget_old_keys, rotate, sealed_by
from store.models import SecretVersion
from store.vault import Vault
from tests.e2e.conftest import Stack, running_stack
from tests.e2e.helpers import credential, current_secret, ssh_device
from tests.servers.sshd import Sshd, Users
from workflows.contracts import (
    WORKFLOW_NAME,
    CommitInput,
    CommitOutcome,
    OperationInput,
    OperationResult,
)

OLD = "R0tate-old-pass"


class _HeldCommit(StoreActivities):
    """The real commit, entered only when the test lets it: the key rotates in between."""

    entered = threading.Event()
    proceed = threading.Event()

    @activity.defn(name="keyturn.commit")
    def commit(self, step: CommitInput) -> CommitOutcome:
        type(self).entered.set()
        assert type(self).proceed.wait(60)
        return super().commit(step)


@pytest.fixture
async def keyed(
    temporal: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Stack]:
    """A stack whose keyring is a file holding the session's key (so the dev server's own
    client could read what it starts), and a client that follows that file as workers do."""
    keyfile = tmp_path / "master.key"
    keyfile.touch(mode=0o600)
    keyfile.write_text(base64.b64encode(temporal.master_key).decode())  # type: ignore[attr-defined]
    client = await Client.connect(
        temporal.client.service_client.config.target_host,
        namespace=temporal.client.namespace,
        data_converter=data_converter(Keyring.from_file(keyfile)),
    )
    monkeypatch.setattr(worker_module, "StoreActivities", _HeldCommit)
    try:
        async with running_stack(
            temporal, tmp_path, client=client, master_key=None, master_key_file=keyfile
        ) as stack:
            yield stack
    finally:
        _HeldCommit.proceed.set()


async def test_a_rotation_mid_operation_leaves_it_complete_and_no_secret_under_the_old_key(
    keyed: Stack, sshd: Sshd, ssh_users: Users
) -> None:
    stack = keyed
    old_payload_key = stack.settings.keyring.cipher(PAYLOADS).key_id
    old_secret_key = Cipher(stack.settings.master_key_bytes, "secrets")
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    cred = await credential(stack, device["id"], user, OLD)
    # Started with the Temporal client alone (naming no revision), the operation commits in
    # a step of its own, which the test holds outside any store transaction.
    handle = await stack.client.start_workflow(
        WORKFLOW_NAME,
        OperationInput(credential_id=cred["id"], kind="change"),
        id=f"rotate-mid-operation-{secrets.token_hex(4)}",
        task_queue=stack.settings.task_queue,
        result_type=OperationResult,
    )
    # The target has the new secret; the commit waits: the operation is mid-flight.
    assert await asyncio.to_thread(_HeldCommit.entered.wait, 60)

    rotation = await asyncio.to_thread(rotate, stack.settings)
    keyfile = stack.settings.master_key_path
    assert keyfile is not None
    rotated = keyfile.read_text()
    # The operation is open with payloads of the old key: the old key must stay.
    with pytest.raises(RotationRefused, match="still open"):
        await forget_old_keys(stack.settings, stack.client)
    assert keyfile.read_text() == rotated and len(rotated.split()) == 2
    _HeldCommit.proceed.set()
    result = await handle.result()

    assert rotation.keys == 2 and rotation.reencrypted == 2  # the old current and the pending
    done = await stack.get(f"/v1/operations/{result.operation_id}")
    assert done["status"] == "succeeded", done
    new_password = current_secret(stack, cred["id"])  # decrypted with the new key alone
    assert new_password != OLD and await ssh_users.password_works(user, new_password)
    keys_used: set[str] = set()
    async for event in handle.fetch_history_events():
        keys_used |= sealed_by(event)
    new_payload_key = stack.settings.keyring.cipher(PAYLOADS).key_id
    assert keys_used == {old_payload_key, new_payload_key}  # started before, ended after
    only_new = Vault(stack.settings.master_key_bytes)
    with Session(stack.engine) as session:
        stored = session.exec(select(SecretVersion)).all()
    assert {v.key_id for v in stored} == {rotation.key_id}
    for version in stored:
        only_new.reveal(version)
        with pytest.raises(InvalidTag):
            old_secret_key.decrypt(
                version.ciphertext, f"{version.credential_id}/{version.id}".encode()
            )
    # Once the operation has ended, the old key can go.
    assert "1 older master key removed" in await forget_old_keys(stack.settings, stack.client)
    assert keyfile.read_text().split() == [rotated.split()[0]]
    assert current_secret(stack, cred["id"]) == new_password

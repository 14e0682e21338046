"""The executor activities on a SQLite store of their own, against the session's real sshd: a
device, a credential and an operation made straight in the store, the activities run in
Temporal's ActivityEnvironment."""

from __future__ import annotations

import dataclasses
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio.testing import ActivityEnvironment

from activities.executor_steps import ExecutorActivities
from store.engine import make_engine
from store.models import (
    Attempt,
    Credential,
    Device,
    LoginCharge,
    Operation,
    Policy,
    SecretState,
    Template,
    TemplateStatus,
    utcnow,
)
from store.seed import seed_shipped_templates
from store.vault import Vault
from tests.servers.sshd import Sshd
from workflows.contracts import ChangeOutcome, ProbeOutcome, StepInput

OLD = "Charge-0ld-pass"
NEW = "Charge-n3w-pass"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Store:
    engine: Engine
    vault: Vault
    activities: ExecutorActivities
    sshd: Sshd

    def operation(
        self,
        username: str,
        password: str,
        kind: str = "verify",
        *,
        port: int | None = None,
        change_template: str = "ssh/linux-passwd",
        **policy: Any,
    ) -> tuple[str, str]:
        """A device on the fixture sshd, a credential and an operation: (operation, device)."""
        with Session(self.engine) as session:
            device = Device(
                name=f"host-{secrets.token_hex(4)}",
                address="127.0.0.1",
                port=port or self.sshd.port,
                executor="ssh",
                host_keys=[self.sshd.host_key_line],
            )
            rules = Policy(name=f"policy-{secrets.token_hex(4)}", **policy)
            credential = Credential(
                device_id=device.id,
                username=username,
                change_template=change_template,
                verify_template="ssh/verify-login",
                policy_id=rules.id,
            )
            for row in (device, rules, credential):  # one by one: no relationships to order them
                session.add(row)
                session.flush()
            self.vault.add(session, credential.id, password, SecretState.CURRENT)
            operation = Operation(credential_id=credential.id, kind=kind, workflow_id="test")
            if kind == "change":
                pending = self.vault.add(session, credential.id, NEW, SecretState.PENDING)
                operation.pending_version_id = pending.id
            session.add(operation)
            session.commit()
            return operation.id, device.id

    def template(self, body: str) -> str:
        """A template as if reviewed: operations run approved versions only."""
        name = f"test/{secrets.token_hex(4)}"
        with Session(self.engine) as session:
            session.add(
                Template(
                    name=name, executor="ssh", kind="change", body=body,
                    status=TemplateStatus.APPROVED, approved_at=utcnow(),
                )
            )  # fmt: skip
            session.commit()
        return name

    def charges(self, device_id: str) -> list[str]:
        with Session(self.engine) as session:
            rows = session.exec(select(LoginCharge).where(LoginCharge.device_id == device_id))
            return [charge.state for charge in rows]

    def attempts(self, operation_id: str) -> list[tuple[str, str]]:
        with Session(self.engine) as session:
            rows = session.exec(
                select(Attempt)
                .where(Attempt.operation_id == operation_id)
                .order_by(col(Attempt.started_at))
            )
            return [(a.step, a.outcome) for a in rows]

    def detail(self, operation_id: str) -> str:
        with Session(self.engine) as session:
            attempt = session.exec(
                select(Attempt).where(Attempt.operation_id == operation_id)
            ).one()
            return attempt.detail or ""

    async def probe(self, operation_id: str) -> ProbeOutcome:
        result: ProbeOutcome = await ActivityEnvironment().run(
            self.activities.probe, StepInput(operation_id)
        )
        return result

    async def change(
        self,
        operation_id: str,
        attempt: int = 1,
        env: ActivityEnvironment | None = None,
        **step: Any,
    ) -> ChangeOutcome:
        env = env or ActivityEnvironment()
        env.info = dataclasses.replace(env.info, attempt=attempt)
        result: ChangeOutcome = await env.run(
            self.activities.change, StepInput(operation_id, **step)
        )
        return result


@pytest.fixture
def store(tmp_path: Path, sshd: Sshd) -> Iterator[Store]:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    seed_shipped_templates(engine)
    vault = Vault(secrets.token_bytes(32))
    yield Store(engine, vault, ExecutorActivities(engine, vault), sshd)
    engine.dispose()

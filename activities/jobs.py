"""Load everything an executor call needs, in one read, and decrypt secrets in memory only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from executors.base import Account, Target, get_executor
from store.models import Credential, Device, Operation, Policy, SecretVersion, Template
from store.vault import Vault
from templating import TemplateContext

DEFAULT_POLICY = Policy(name="(default)")
_Row = TypeVar("_Row")


@dataclass(frozen=True)
class Job:
    """One operation's executor view. Lives only inside an activity; never serialised."""

    operation: Operation
    credential: Credential
    device: Device
    policy: Policy
    target: Target
    change_template: str
    verify_template: str
    current_password: str
    pending_password: str | None
    auth_account: Account | None

    @property
    def connecting_account(self) -> Account:
        """Who logs in to run the change: the auth account if one is set, else the credential."""
        return self.auth_account or Account(self.credential.username, self.current_password)

    def context(self, new_password: str | None = None) -> TemplateContext:
        return TemplateContext(
            username=self.credential.username,
            current_password=self.current_password,
            new_password=new_password if new_password is not None else self.pending_password or "",
            hostname=self.device.name,
            address=self.device.address,
            port=self.device.port,
            auth_username=self.auth_account.username if self.auth_account else "",
            auth_password=self.auth_account.password if self.auth_account else "",
        )

    @property
    def secrets(self) -> tuple[str, ...]:
        return self.context().secrets


def latest_template(session: Session, name: str) -> Template:
    template = session.exec(
        select(Template).where(Template.name == name).order_by(col(Template.version).desc())
    ).first()
    if template is None:
        raise LookupError(f"template {name!r} does not exist")
    return template


def policy_for(session: Session, credential: Credential) -> Policy:
    if credential.policy_id:
        policy = session.get(Policy, credential.policy_id)
        if policy is not None:
            return policy
    return DEFAULT_POLICY


def target_for(device: Device, policy: Policy) -> Target:
    return Target(
        name=device.name,
        address=device.address,
        port=device.port,
        host_keys=tuple(device.host_keys),
        trust_on_first_use=device.trust_on_first_use,
        options=dict(device.options),
        connect_timeout=policy.connect_timeout_seconds,
        read_timeout=policy.read_timeout_seconds,
    )


def load_job(engine: Engine, vault: Vault, operation_id: str, via_reconcile: bool = False) -> Job:
    """Everything one executor call needs. ``via_reconcile``: connect with the credential's
    reconcile credential and run the executor's privileged change template, to take control
    of an account whose current secret no longer works."""
    with Session(engine, expire_on_commit=False) as session:
        operation = get_or_raise(session, Operation, operation_id)
        credential = get_or_raise(session, Credential, operation.credential_id)
        device = get_or_raise(session, Device, credential.device_id)
        policy = policy_for(session, credential)
        current = Vault.current(session, credential.id)
        if current is None:
            raise LookupError(f"credential {credential.id} has no current secret")
        pending = (
            session.get(SecretVersion, operation.pending_version_id)
            if operation.pending_version_id
            else None
        )
        change_template = credential.change_template
        privileged_id = credential.auth_credential_id
        if via_reconcile:
            if credential.reconcile_credential_id is None:
                raise LookupError(f"credential {credential.id} has no reconcile credential")
            privileged_id = credential.reconcile_credential_id
            change_template = get_executor(device.executor).default_templates["change-as-admin"]
        return Job(
            operation=operation,
            credential=credential,
            device=device,
            policy=policy,
            target=target_for(device, policy),
            change_template=latest_template(session, change_template).body,
            verify_template=latest_template(session, credential.verify_template).body,
            current_password=vault.reveal(current),
            pending_password=vault.reveal(pending) if pending else None,
            auth_account=_account(session, vault, privileged_id) if privileged_id else None,
        )


def _account(session: Session, vault: Vault, credential_id: str) -> Account:
    credential = get_or_raise(session, Credential, credential_id)
    secret = Vault.current(session, credential.id)
    if secret is None:
        raise LookupError(f"credential {credential.id} has no current secret")
    return Account(credential.username, vault.reveal(secret))


def get_or_raise(session: Session, model: type[_Row], key: str) -> _Row:
    """The row, or a LookupError that names what is missing."""
    row = session.get(model, key)
    if row is None:
        raise LookupError(f"{model.__name__.lower()} {key} not found")
    return row

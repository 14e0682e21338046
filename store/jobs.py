"""Load everything an executor call needs, in one read, and decrypt secrets in memory only.

Everything that can be checked before connecting is checked here, and a problem is raised as
ConfigurationError naming what to fix: a template that is missing, of another executor or
kind, or does not parse; device options the executor refuses; a privileged account that is
missing or has no current secret. Such a job never reaches a target, so it costs no login.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from executors.base import (
    Account,
    ConfigurationError,
    Executor,
    Target,
    check_target,
    get_executor,
    insecure_transport,
)
from store import audit
from store.engine import session_scope
from store.models import (
    Credential,
    Device,
    Operation,
    Policy,
    SecretVersion,
    Task,
    TaskRun,
    Template,
    utcnow,
)
from store.queries import OperationRows, get_or_raise, latest_template, operation_on_device
from store.vault import Vault
from templating import TemplateContext, TemplateSyntaxProblem
from workflows.contracts import LIFECYCLE_KINDS, TASK_KIND

LIFECYCLE_FIELD = "lifecycle_templates"

SSH_KEY = "ssh-key"  # Credential.secret_type of a credential whose secret is a private key


@dataclass(frozen=True)
class KeyDevice:
    """One device where an ssh-key credential's public key is authorized: the credential's own
    device first, then its key targets. A key target is reached as the account itself, with
    the executor's own key templates; only the credential's device may use the auth account."""

    device_id: str
    target: Target
    install_template: str
    remove_template: str
    privileged: bool  # the install and remove run as the auth (or reconcile) account


@dataclass(frozen=True)
class Job:
    """One operation's executor view. Lives only inside an activity; never serialised.

    A job loaded for a probe (``for_change=False``) has no change template ("") and no auth
    account: a login check needs neither.
    """

    operation: Operation
    credential: Credential
    device: Device
    policy: Policy
    target: Target
    change_template: str
    verify_template: str
    current_password: str = field(repr=False)
    pending_password: str | None = field(repr=False)
    auth_account: Account | None  # Account keeps its password out of repr itself
    current_version_id: str = ""
    # Why the device's channel is not encrypted and verified, when the device allows that.
    insecure_transport: str | None = None
    # An ssh-key credential: every device where its key is authorized (loaded for a change and
    # for a login check alike). Empty for a password credential.
    key_devices: tuple[KeyDevice, ...] = ()

    @property
    def holds_key(self) -> bool:
        return self.credential.secret_type == SSH_KEY

    def account(self, secret: str) -> Account:
        """The credential's own account logging in with ``secret`` (a password or a key)."""
        if self.holds_key:
            return Account(self.credential.username, "", private_key=secret)
        return Account(self.credential.username, secret)

    @property
    def connecting_account(self) -> Account:
        """Who logs in to run the change: the auth account if one is set, else the credential."""
        return self.auth_account or self.account(self.current_password)

    def context(
        self, new_password: str | None = None, values: dict[str, str] | None = None
    ) -> TemplateContext:
        """What templates may use. A private key never goes in: a key template gets the public
        key it installs or removes in ``values``."""
        values = dict(values or {})
        if self.operation.ttl_seconds:
            # jit-create: when the account's time is up (a PostgreSQL role's VALID UNTIL, say).
            until = utcnow() + timedelta(seconds=self.operation.ttl_seconds)
            values["valid_until"] = until.isoformat(timespec="seconds")
        if self.holds_key:
            current, new = "", ""
        else:
            current = self.current_password
            new = new_password if new_password is not None else self.pending_password or ""
        return TemplateContext(
            username=self.credential.username,
            current_password=current,
            new_password=new,
            hostname=self.device.name,
            address=self.device.address,
            port=self.device.port,
            auth_username=self.auth_account.username if self.auth_account else "",
            auth_password=self.auth_account.password if self.auth_account else "",
            values=values,
        )

    @property
    def secrets(self) -> tuple[str, ...]:
        keys = (self.current_password, self.pending_password or "") if self.holds_key else ()
        return (*self.context().secrets, *(k for k in keys if k))


def lifecycle_template(executor: Executor, credential: Credential, kind: str) -> tuple[str, str]:
    """The template an activate, deactivate, jit-create or jit-remove runs, and where its name
    comes from: the credential's own choice, else the executor's default ("" if none)."""
    chosen = credential.lifecycle_templates.get(kind)
    if chosen:
        return chosen, f"{LIFECYCLE_FIELD}.{kind}"
    return executor.default_templates.get(kind, ""), f"{kind} template"


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
        allow_insecure_transport=device.allow_insecure_transport,
    )


def job_in(
    session: Session,
    vault: Vault,
    operation_id: str,
    via_reconcile: bool = False,
    *,
    for_change: bool = True,
    loaded: OperationRows | None = None,
) -> Job:
    """Everything one executor call needs, read in ``session``'s transaction, which also
    records the secrets read (the step opens its attempt in the same one: one trip to the
    store). ``via_reconcile``: connect with the credential's reconcile credential and run the
    executor's privileged change template, to take control of an account whose current secret
    no longer works. ``for_change``: load (and check) the change template and the connecting
    account too, not only what a login check needs. ``loaded``: the operation's rows
    (``operation_on_device``), if the caller read them in this transaction.

    Raises ConfigurationError for anything that cannot work (see the module docstring)."""
    operation, credential, device, policy = loaded or operation_on_device(session, operation_id)
    if credential.secret_type == SSH_KEY:
        # A key probe may finish or undo a change (activities/key_steps.py): it needs the
        # key templates and the account that runs them, like the change.
        for_change = True
    executor = _executor(device)
    target = target_for(device, policy)
    check_target(executor, target)  # refuses an insecure channel the device does not allow
    insecure = insecure_transport(executor, target)
    current = Vault.current(session, credential.id)
    if current is None:
        raise _problem(
            device,
            "secret",
            f"credential {credential.id} ({credential.username!r}) has no current secret: "
            "give it one (create the credential again with its password)",
        )
    pending = (
        session.get(SecretVersion, operation.pending_version_id)
        if operation.pending_version_id
        else None
    )
    rows = (device, credential, operation)
    verify_body = _template_body(
        session, executor, rows, "verify_template", credential.verify_template, "verify"
    )
    change_body = ""
    auth_account = None
    key_devices: tuple[KeyDevice, ...] = ()
    if credential.secret_type == SSH_KEY:
        key_devices = _key_devices(
            session, executor, rows, policy, for_change=for_change, via_reconcile=via_reconcile
        )
    if for_change:
        change_name, field = credential.change_template, "change_template"
        privileged_id, role = credential.auth_credential_id, "auth_credential_id"
        if operation.kind in LIFECYCLE_KINDS:
            change_name, field = lifecycle_template(executor, credential, operation.kind)
            if privileged_id is None:
                raise _problem(
                    device,
                    "auth_credential_id",
                    f"credential {credential.id} ({credential.username!r}) has no "
                    f"auth_credential_id: {operation.kind} runs through a privileged account "
                    "on the same device; set one",
                )
        elif via_reconcile:
            if credential.reconcile_credential_id is None:
                raise _problem(
                    device,
                    "reconcile",
                    f"credential {credential.id} ({credential.username!r}) has no "
                    "reconcile_credential_id: set one (a privileged account on the same "
                    f"device) with PATCH /v1/credentials/{credential.id} to reconcile it",
                )
            privileged_id, role = credential.reconcile_credential_id, "reconcile_credential_id"
            admin_kind = "key-install" if credential.secret_type == SSH_KEY else "change"
            change_name = executor.default_templates.get(f"{admin_kind}-as-admin", "")
            field = "change-as-admin template"
            if not change_name:
                raise _problem(
                    device,
                    "reconcile",
                    f"executor {device.executor!r} names no change-as-admin template, so "
                    f"credential {credential.id} ({credential.username!r}) cannot be "
                    "reconciled",
                )
        if not change_name:
            raise _problem(
                device,
                field,
                f"executor {device.executor!r} ships no {operation.kind} template: name "
                f"one in credential {credential.id}'s lifecycle_templates",
            )
        if operation.kind in LIFECYCLE_KINDS:
            change_kind = operation.kind
        elif credential.secret_type == SSH_KEY:
            change_kind = "key-install"
        else:
            change_kind = "change"
        change_body = _template_body(session, executor, rows, field, change_name, change_kind)
        if privileged_id:
            auth_account = _account(session, vault, device, credential, role, privileged_id)
    _record_secret_read(
        session,
        operation,
        device,
        [v.id for v in (current, pending) if v is not None],
        auth_account is not None,
        "change" if for_change else "login check",
    )
    return Job(
        operation=operation,
        credential=credential,
        device=device,
        policy=policy,
        target=target,
        change_template=change_body,
        verify_template=verify_body,
        current_password=vault.reveal(current),
        pending_password=vault.reveal(pending) if pending else None,
        auth_account=auth_account,
        current_version_id=current.id,
        insecure_transport=insecure,
        key_devices=key_devices,
    )


def load_task_job(
    engine: Engine, vault: Vault, operation_id: str, run_id: str
) -> tuple[Job, dict[str, str | int | bool]]:
    """What one target of a task's run needs: the job (its ``change_template`` is the task's
    template, the version its run's parameters were checked against; the account is the
    credential's own, with its current secret) and the run's parameters, checked when the
    run was requested. ConfigurationError for anything that cannot work, as for a change."""
    with session_scope(engine) as session:
        operation, credential, device, policy = operation_on_device(session, operation_id)
        run = get_or_raise(session, TaskRun, run_id)
        task = get_or_raise(session, Task, run.task_id)
        if not credential.active:
            raise _problem(
                device,
                "active",
                f"credential {credential.id} ({credential.username!r}) is inactive (locked on "
                "its target): activate it before a task runs as it",
            )
        executor = _executor(device)
        target = target_for(device, policy)
        check_target(executor, target)
        current = Vault.current(session, credential.id)
        if current is None:
            raise _problem(
                device,
                "secret",
                f"credential {credential.id} ({credential.username!r}) has no current secret, "
                "so the task cannot log in as it",
            )
        rows = (device, credential, operation)
        # The version the run's parameters were checked against, whatever was approved since.
        version = run.template_version or None
        body = _template_body(
            session, executor, rows, "template", task.template, TASK_KIND, version
        )
        _record_secret_read(session, operation, device, [current.id], False, "task")
        job = Job(
            operation=operation,
            credential=credential,
            device=device,
            policy=policy,
            target=target,
            change_template=body,
            verify_template="",
            current_password=vault.reveal(current),
            pending_password=None,
            auth_account=None,
            current_version_id=current.id,
            insecure_transport=insecure_transport(executor, target),
        )
        return job, dict(run.parameters)


def _record_secret_read(
    session: Session,
    operation: Operation,
    device: Device,
    version_ids: list[str],
    privileged: bool,
    purpose: str,
) -> None:
    """Every decryption of a secret is an audit event: which versions, for which step."""
    audit.record(
        session,
        "secret.read",
        operation_id=operation.id,
        credential_id=operation.credential_id,
        device_id=device.id,
        principal=operation.requested_by or audit.KEYTURN,
        version_ids=version_ids,
        privileged_account=privileged,
        purpose=purpose,
    )


def _problem(device: Device, step: str, cause: str) -> ConfigurationError:
    return ConfigurationError(device.name, step, cause)


def _executor(device: Device) -> Executor:
    try:
        return get_executor(device.executor)
    except LookupError as exc:
        raise _problem(
            device,
            "executor",
            f"device {device.name!r} uses executor {device.executor!r}: {exc}; install it on "
            f"the workers of zone {device.zone!r}",
        ) from None


def _template_body(
    session: Session,
    executor: Executor,
    rows: tuple[Device, Credential, Operation],
    field: str,
    name: str,
    kind: str,
    version: int | None = None,
) -> str:
    """The version of a credential's template current when the operation was requested (or
    ``version``, one a request was checked against), checked: it exists, is of the device's
    executor and of ``kind``, and parses. ``field`` says where the name comes from."""
    device, credential, operation = rows
    whose = f"credential {credential.id} ({credential.username!r})"
    try:
        if version is None:
            template = latest_template(session, name, as_of=operation.created_at)
        else:
            template = _approved_version(session, name, version)
    except LookupError:
        usable = _usable(session, device.executor, kind)
        raise _problem(
            device,
            field,
            f"{whose}: {field} names template {name!r}, which does not exist: save a template "
            f"of that name (POST /v1/templates) or use one of the {device.executor} {kind} "
            f"templates ({usable})",
        ) from None
    if template.executor != device.executor or template.kind != kind:
        usable = _usable(session, device.executor, kind)
        raise _problem(
            device,
            field,
            f"{whose}: {field} names {name!r}, a {template.executor} {template.kind} template, "
            f"but device {device.name!r} needs a {device.executor} {kind} template ({usable})",
        )
    try:
        executor.validate(template.body)
    except TemplateSyntaxProblem as exc:
        raise _problem(
            device,
            field,
            f"{whose}: template {name!r} (version {template.version}) does not parse for the "
            f"{device.executor} executor: {exc}; save a corrected version",
        ) from None
    return template.body


def _approved_version(session: Session, name: str, version: int) -> Template:
    template = session.exec(
        select(Template).where(
            Template.name == name,
            Template.version == version,
            col(Template.approved_at).is_not(None),
        )
    ).first()
    if template is None:
        raise LookupError(f"template {name!r} has no approved version {version}")
    return template


def _key_devices(
    session: Session,
    executor: Executor,
    rows: tuple[Device, Credential, Operation],
    policy: Policy,
    *,
    for_change: bool,
    via_reconcile: bool,
) -> tuple[KeyDevice, ...]:
    """The credential's device and its key targets, each checked like the credential's own.
    For a login check the templates are not needed (""), only where to connect."""
    device, credential, operation = rows
    privileged = via_reconcile or credential.auth_credential_id is not None
    install = remove = ""
    if for_change:
        install_name = credential.change_template
        remove_name = credential.key_remove_template or ""
        if via_reconcile:
            install_name = executor.default_templates.get("key-install-as-admin", "")
            remove_name = executor.default_templates.get("key-remove-as-admin", "")
        install = _template_body(
            session, executor, rows, "change_template", install_name, "key-install"
        )
        remove = _template_body(
            session, executor, rows, "key_remove_template", remove_name, "key-remove"
        )
    found = [KeyDevice(device.id, target_for(device, policy), install, remove, privileged)]
    for device_id in credential.key_targets:
        other = session.get(Device, device_id)
        if other is None:
            raise _problem(
                device,
                "key_targets",
                f"credential {credential.id} ({credential.username!r}) names key target "
                f"{device_id}, which is no longer a device: remove it from key_targets",
            )
        other_executor = _executor(other)
        target = target_for(other, policy)
        check_target(other_executor, target)
        if for_change:
            other_rows = (other, credential, operation)
            defaults = other_executor.default_templates
            install, remove = (
                _template_body(
                    session,
                    other_executor,
                    other_rows,
                    f"{kind} template",
                    defaults.get(kind, ""),
                    kind,
                )
                for kind in ("key-install", "key-remove")
            )
        found.append(KeyDevice(other.id, target, install, remove, privileged=False))
    return tuple(found)


def _usable(session: Session, executor: str, kind: str) -> str:
    names = session.exec(
        select(Template.name)
        .where(Template.executor == executor, Template.kind == kind)
        .distinct()
        .order_by(col(Template.name))
    ).all()
    return ", ".join(names) or "none is saved"


def _account(
    session: Session,
    vault: Vault,
    device: Device,
    credential: Credential,
    role: str,
    privileged_id: str,
) -> Account:
    """The privileged account a change connects with (auth or reconcile credential)."""
    whose = f"credential {credential.id} ({credential.username!r})"
    privileged = session.get(Credential, privileged_id)
    if privileged is None:
        raise _problem(
            device, role, f"{whose}: {role} {privileged_id} names no credential: set another"
        )
    secret = Vault.current(session, privileged.id)
    if secret is None:
        raise _problem(
            device,
            role,
            f"{whose}: its {role} {privileged.id} ({privileged.username!r}) has no current "
            "secret, so it cannot log in: give that credential its password, or set another",
        )
    return Account(privileged.username, vault.reveal(secret))

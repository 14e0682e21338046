"""SQLModel tables. Secret values appear only as ciphertext (SecretVersion.ciphertext)."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from keyturn.zones import DEFAULT_ZONE
from store.passwords import PasswordRules


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """A datetime in UTC, zone attached. SQLite and PostgreSQL (timestamp without time zone)
    hand back naive datetimes; the store writes UTC only, so naive means UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class SecretState(enum.StrEnum):
    PENDING = "pending"
    CURRENT = "current"
    PREVIOUS = "previous"
    FAILED = "failed"


class OperationStatus(enum.StrEnum):
    QUEUED = "queued"  # waiting behind another operation on the same credential (the gate)
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.CANCELED)


class TemplateStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"


class Role(enum.StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    AUDITOR = "auditor"
    APP = "app"
    TEMPLATE_AUTHOR = "template-author"
    APPROVER = "approver"


class SyncState(enum.StrEnum):
    IN_SYNC = "in_sync"
    OUT_OF_SYNC = "out_of_sync"
    UNKNOWN = "unknown"


class Device(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    name: str = Field(index=True, unique=True)
    address: str
    port: int
    executor: str
    zone: str = DEFAULT_ZONE
    profile: str = "default"
    host_keys: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    trust_on_first_use: bool = False
    options: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # Secrets may cross an unencrypted or unverified channel (executors refuse it otherwise).
    allow_insecure_transport: bool = False
    max_concurrent_operations: int | None = None  # overrides the policy's cap for this device
    created_at: datetime = Field(default_factory=utcnow)


class Policy(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    name: str = Field(index=True, unique=True)
    length: int = 24
    lowercase: bool = True
    uppercase: bool = True
    digits: bool = True
    symbols: bool = True
    exclude: str = ""
    max_attempts: int = 5
    retry_interval_seconds: float = 10.0
    backoff: float = 2.0
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 30.0
    lockout_budget: int = 3  # failed logins Keyturn may cause per account per window
    lockout_window_seconds: float = 900.0
    max_concurrent_operations: int = 2  # per device, whatever triggered them
    # Automatic triggers (triggers/): each is off while None.
    change_every_seconds: int | None = None  # expiry: the oldest a current secret may get
    verify_every_seconds: int | None = None  # verification heartbeat
    # When automatic triggers may act: {"days": [...], "start", "end", "timezone"}; None: always.
    change_window: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    jitter_seconds: int = 0  # expiry changes are spread over this long
    change_after_view_seconds: int | None = None
    change_after_session_seconds: int | None = None
    max_session_wait_seconds: int | None = None  # None: an expiry change waits for the session
    paused: bool = False  # the policy's schedules are paused
    # The end of a credential's last open session deactivates it (it is activated again, first,
    # when the next session starts).
    lock_after_session: bool = False
    # The key pair a change of an ssh-key credential generates (store/ssh_keys.py).
    key_type: str = "ed25519"
    key_bits: int | None = None  # rsa only; None: store.ssh_keys.DEFAULT_RSA_BITS
    created_at: datetime = Field(default_factory=utcnow)

    def password_rules(self) -> PasswordRules:
        return PasswordRules(
            self.length, self.lowercase, self.uppercase, self.digits, self.symbols, self.exclude
        )


class Template(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: str = Field(default_factory=new_id, primary_key=True)
    name: str = Field(index=True)
    version: int = 1
    executor: str
    kind: str
    body: str = Field(sa_column=Column(Text, nullable=False))
    shipped: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    # Maker-checker: a version runs only once an approver other than its author approved it.
    # pending → approved (→ superseded by a newer approved version) or rejected.
    status: str = TemplateStatus.PENDING
    author: str = "keyturn"  # the principal who proposed it (shipped: keyturn)
    reviewed_by: str | None = None
    reviewed_at: datetime | None = None
    approved_at: datetime | None = None  # operations requested from then on may run it
    review_note: str | None = None


class Credential(SQLModel, table=True):
    # What sweeps page through (triggers/due.py): a policy's credentials by age, never a scan.
    __table_args__ = (
        Index("ix_credential_expiry", "policy_id", "secret_changed_at", "id"),
        Index("ix_credential_verify", "policy_id", "verified_at", "id"),
    )

    id: str = Field(default_factory=new_id, primary_key=True)
    device_id: str = Field(foreign_key="device.id", index=True)
    username: str
    profile: str = "default"
    change_template: str
    verify_template: str
    auth_credential_id: str | None = Field(default=None, foreign_key="credential.id")
    policy_id: str | None = Field(default=None, foreign_key="policy.id")
    parent_id: str | None = Field(default=None, foreign_key="credential.id", index=True)
    reconcile_credential_id: str | None = Field(default=None, foreign_key="credential.id")
    auto_reconcile: bool = False
    sync_state: SyncState = SyncState.IN_SYNC
    # Set by ``keyturn restore`` when an operation was in flight at backup time: the next start
    # requests a verify, which also tries that operation's pending secret (starter/restored.py).
    needs_verify: bool = False
    # "password", or "ssh-key": the secret is an OpenSSH private key whose public half a change
    # installs in the account's authorized_keys on its device and on every key target.
    secret_type: str = "password"
    # Other devices where the same account must accept the same key (ids; ssh-key only).
    key_targets: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # ssh-key: the key-remove template; change_template is then the key-install template.
    key_remove_template: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    # Kept with the credential so sweeps find what is due through an index: when the current
    # secret became current, and when it was last seen to log in.
    secret_changed_at: datetime = Field(default_factory=utcnow)
    verified_at: datetime = Field(default_factory=utcnow)
    # Moved by activate and deactivate (and jit-create, jit-remove): an inactive account is
    # locked on its target, so no expiry or view asks for its change.
    active: bool = True
    # A just-in-time account exists until then (a delayed jit-remove ends it); None: no such
    # account is out there (never created, or removed).
    jit_until: datetime | None = None
    # Templates for activate, deactivate, jit-create and jit-remove instead of the executor's
    # defaults ({"deactivate": "ldap/ad-disable"}, say).
    lifecycle_templates: dict[str, str] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )


class CredentialSession(SQLModel, table=True):
    """A session using a credential, as its requesting module reported it. Open while
    ``ended_at`` is None: an expiry change waits for the credential's open sessions."""

    credential_id: str = Field(foreign_key="credential.id", primary_key=True)
    session_id: str = Field(primary_key=True)
    started_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None


class SecretVersion(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    credential_id: str = Field(foreign_key="credential.id", index=True)
    state: SecretState
    key_id: str
    ciphertext: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    operation_id: str | None = Field(default=None, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    changed_at: datetime = Field(default_factory=utcnow)
    # The last time a login with this secret was seen to work on the target, and by which
    # operation: what an administrator recovering a credential by hand needs to choose a version.
    last_login_ok_at: datetime | None = None
    last_login_ok_operation_id: str | None = None


class Operation(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    credential_id: str | None = Field(default=None, foreign_key="credential.id", index=True)
    kind: str
    trigger: str = "manual"
    status: OperationStatus = OperationStatus.SCHEDULED
    workflow_id: str = Field(index=True)
    pending_version_id: str | None = None
    parent_operation_id: str | None = Field(default=None, index=True)
    resolution: str | None = None
    error: str | None = None
    error_type: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    # The credential's gate (store/gate.py): one operation at a time per credential, FIFO.
    run_id: str | None = None  # the workflow run this operation is, so it can be signalled
    gate_seq: int = 0  # order of registration on the credential
    gate_state: str | None = None  # "queued" | "holding" while in the gate; None once left
    waiting_for: str | None = None  # the operation ahead of this one while it is queued
    base_version_id: str | None = None  # the current version prepare read: commit's CAS
    # The version this operation acts with instead of a generated one: the one to adopt, the
    # value an administrator supplied (set-in-vault, a change's next_password), or after a
    # restore the pending secret of the operation that was in flight (a verify tries it too).
    source_version_id: str | None = None
    requested_by: str | None = None  # the principal who asked; None: Keyturn itself (a trigger)
    # Its list of callback URLs (OperationCallback) is closed: the outcome is about to be POSTed
    # to each, and a request that would join it starts a new operation instead.
    callbacks_closed: bool = False
    ttl_seconds: int | None = None  # jit-create: how long the account lives once created
    # An ssh-key change: what happened on each device (store/key_results.py), no secret.
    key_results: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON))
    # A certificate's action (cert-request, cert-sign, cert-revoke, cert-publish): it acts on
    # that certificate and on no credential (credential_id is then None).
    certificate_id: str | None = Field(default=None, index=True)

    @property
    def on_credential(self) -> str:
        """The credential this operation acts on: every kind has one but a certificate's."""
        if self.credential_id is None:
            raise LookupError(
                f"operation {self.id} acts on certificate {self.certificate_id}, not a credential"
            )
        return self.credential_id


class OperationCallback(SQLModel, table=True):
    """Where an operation's outcome is POSTed when it ends: one row per requester's URL (the
    request that started it and every one that joined it), in the order they were registered."""

    operation_id: str = Field(primary_key=True)  # no foreign key: a join may come before the row
    position: int = Field(primary_key=True)  # 1, 2, …: part of the webhook-id
    url: str
    created_at: datetime = Field(default_factory=utcnow)


class Attempt(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    operation_id: str = Field(foreign_key="operation.id", index=True)
    step: str  # change | verify | probe
    number: int
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    outcome: str = "running"  # running | succeeded | <error kind>
    detail: str | None = None
    transcript: str = Field(default="", sa_column=Column(Text, nullable=False))


class Principal(SQLModel, table=True):
    """Who may call the API: a role, the profiles it sees and, for an ``app``, the credentials
    whose secrets it reads. Its name is what the audit trail and the SIEM echo call it."""

    id: str = Field(default_factory=new_id, primary_key=True)
    name: str = Field(index=True, unique=True)
    role: str
    profiles: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    credential_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_by: str = "keyturn"
    created_at: datetime = Field(default_factory=utcnow)


class PrincipalToken(SQLModel, table=True):
    """An API token of a principal, stored as its SHA-256 only; ``prefix`` (shown in lists and
    the audit trail) names it without revealing it."""

    prefix: str = Field(primary_key=True)
    principal_id: str = Field(foreign_key="principal.id", index=True)
    digest: str
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class AuditEvent(SQLModel, table=True):
    """One event of the audit trail: append-only (the store refuses updates and deletes) and
    hash-chained, each row holding the hash of the one before (store/audit.py)."""

    id: int | None = Field(default=None, primary_key=True)  # 1, 2, 3…: its place in the chain
    at: datetime = Field(default_factory=utcnow, index=True)
    event: str = Field(index=True)
    principal: str = "keyturn"  # who caused it: the API's caller, or keyturn itself
    outcome: str = "ok"
    operation_id: str | None = Field(default=None, index=True)
    credential_id: str | None = Field(default=None, index=True)
    device_id: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    prev_hash: str = ""
    hash: str = ""


class AuditHead(SQLModel, table=True):
    """The chain's last event: appending updates this row first, so appends are serialised (in
    commit order, which is the order readers and the SIEM echo see) and a removed last event is
    noticed."""

    id: int = Field(default=1, primary_key=True)
    last_id: int = 0
    hash: str = ""


class SiemCursor(SQLModel, table=True):
    """The SIEM outbox, per destination: every audit event after ``last_id`` waits to be sent.
    ``lease_owner`` is the worker delivering it until ``lease_until``."""

    destination: str = Field(primary_key=True)
    last_id: int = 0
    lease_owner: str | None = None
    lease_until: datetime | None = None


class LoginCharge(SQLModel, table=True):
    """One login Keyturn makes with a secret that may be refused, charged to the lockout budget.

    ``reserved`` while the login is in flight (so concurrent logins cannot overspend), then
    ``failed`` (counts until it leaves the window) or deleted (the login worked, or never
    reached authentication)."""

    id: str = Field(default_factory=new_id, primary_key=True)
    device_id: str = Field(index=True)
    username: str = Field(index=True)
    state: str = "reserved"
    at: datetime = Field(default_factory=utcnow, index=True)


class AccountLock(SQLModel, table=True):
    """A row per (device, account) that budget checks update first: the write lock it takes
    serialises concurrent checks on SQLite and PostgreSQL alike."""

    device_id: str = Field(primary_key=True)
    username: str = Field(primary_key=True)
    touched: int = 0


class CredentialGate(SQLModel, table=True):
    """A row per credential that gate steps update first: the write lock it takes serialises
    registering and leaving on SQLite and PostgreSQL alike, and ``seq`` orders registrations."""

    credential_id: str = Field(primary_key=True)
    seq: int = 0


class SchemaVersion(SQLModel, table=True):
    """The store's schema version, moved only by store/migrations.py."""

    id: int = Field(default=1, primary_key=True)
    version: int


class DeviceSlot(SQLModel, table=True):
    """A per-device concurrency slot held by one running operation (primary key = the slot).

    Only operations started before the device-slot workflow (workflows/device_slots.py) existed
    use this table; it goes once no such operation can still be running."""

    device_id: str = Field(primary_key=True)
    slot: int = Field(primary_key=True)
    operation_id: str = Field(index=True)
    acquired_at: datetime = Field(default_factory=utcnow)


class DeviceSlotGate(SQLModel, table=True):
    """A row per device that slot steps update first (as ``CredentialGate`` for credentials):
    claiming and giving back a device's slots are serialised per device. ``capacity`` is the
    device's cap as the newest claim read it."""

    device_id: str = Field(primary_key=True)
    seq: int = 0
    capacity: int = 1


class DeviceSlotClaim(SQLModel, table=True):
    """One claim on one of a device's slots (store/device_slots.py): held, or waiting its turn
    in ``order_key`` order. Gone once given back: an idle device has no claims."""

    token: str = Field(primary_key=True)
    device_id: str = Field(index=True)
    order_key: str
    workflow_id: str
    run_id: str | None = None
    held: bool = False
    # The claim whose release handed it its slot: a retried release answers the same claims.
    handed_over_by: str | None = Field(default=None, index=True)
    claimed_at: datetime = Field(default_factory=utcnow)


class Task(SQLModel, table=True):
    """A task: a template of kind ``task``, the accounts it runs as (one credential per target,
    each naming its device), the parameter values it keeps, and its schedule, if any (a Temporal
    Schedule ``keyturn-task-<id>`` runs it)."""

    id: str = Field(default_factory=new_id, primary_key=True)
    name: str = Field(index=True, unique=True)
    template: str  # a template name; each run uses the version approved when it was requested
    executor: str  # the template's executor: every credential's device uses it
    credential_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    parameters: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # {"cron": "0 3 * * *", "timezone": "Europe/Paris"} or {"every_seconds": 3600}; None: on
    # demand only.
    schedule: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # The profile of its credentials (one for all): who sees the task sees them.
    profile: str = Field(default="default", index=True)
    created_by: str = "keyturn"
    created_at: datetime = Field(default_factory=utcnow)
    # Deleted: its schedule is gone and it runs no more; it and its runs stay readable.
    deleted_at: datetime | None = None


class TaskRun(SQLModel, table=True):
    """One run of a task: a workflow with one child per credential (TaskResult)."""

    id: str = Field(default_factory=new_id, primary_key=True)
    task_id: str = Field(foreign_key="task.id", index=True)
    template_version: int = 0  # the version of the task's template this run uses
    trigger: str = "manual"  # manual, or task-schedule
    status: OperationStatus = OperationStatus.SCHEDULED
    parameters: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    workflow_id: str = Field(index=True)
    requested_by: str | None = None  # the principal; None: the task's schedule
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class TaskResult(SQLModel, table=True):
    """What one run did with one credential: an operation of kind ``task`` at the credential's
    gate, its exit status and its whole output (redacted; the workflow keeps only its start)."""

    run_id: str = Field(foreign_key="taskrun.id", primary_key=True)
    credential_id: str = Field(primary_key=True)
    device_id: str
    operation_id: str = Field(index=True)
    status: OperationStatus = OperationStatus.SCHEDULED
    exit_status: int | None = None
    output: str = Field(default="", sa_column=Column(Text, nullable=False))
    error_type: str | None = None
    error: str | None = None
    finished_at: datetime | None = None


class CertStatus(enum.StrEnum):
    REQUESTED = "requested"  # the key pair and CSR are being made
    AWAITING_APPROVAL = "awaiting_approval"  # an approver other than the requester must approve
    ISSUED = "issued"  # signed by its CA
    REVOKED = "revoked"
    FAILED = "failed"  # the request was never signed (see the operation's error)


class CertificateAuthority(SQLModel, table=True):
    """A CA certificates are signed in: its plugin (``keyturn.cas``), the plugin's settings,
    and, for a CA whose key Keyturn holds (``internal``), its certificate, its private key
    (encrypted like every secret: store/sealed.py) and its current CRL."""

    name: str = Field(primary_key=True)
    plugin: str
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    certificate_pem: str = Field(default="", sa_column=Column(Text, nullable=False))
    key_id: str | None = None
    key_ciphertext: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    crl_number: int = 0
    crl_der: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    created_at: datetime = Field(default_factory=utcnow)


class Certificate(SQLModel, table=True):
    """A managed certificate: what to ask for, where to install it, and what it is now. Its
    private key is sealed in the vault (``key_ciphertext``), never in a workflow or a log."""

    id: str = Field(default_factory=new_id, primary_key=True)
    name: str = Field(index=True, unique=True)
    subject: str
    sans: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    key_type: str
    validity_days: int
    ca: str = Field(foreign_key="certificateauthority.name")
    # [{"device_id", "credential_id", "cert_path", "key_path", "reload_command", "verify_port"}]
    publish_to: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    renew_before_days: int | None = None
    status: str = CertStatus.REQUESTED
    requested_by: str = "keyturn"
    requires_approval: bool = False
    approved_by: str | None = None
    serial: str | None = None  # hex, as openssl prints it
    not_before: datetime | None = Field(default=None)
    not_after: datetime | None = Field(default=None, index=True)
    certificate_pem: str | None = Field(default=None, sa_column=Column(Text))
    csr_pem: str | None = Field(default=None, sa_column=Column(Text))
    key_id: str | None = None
    key_ciphertext: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    # A request's new key, until its certificate is signed: the key in use stays until then.
    pending_key_id: str | None = None
    pending_key_ciphertext: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    profile: str = "default"
    revoked_at: datetime | None = None
    revocation_reason: str | None = None
    published_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)

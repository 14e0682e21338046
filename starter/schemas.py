"""Request and response bodies of the HTTP API. Secrets are write-only: no response has one."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from keyturn.zones import DEFAULT_ZONE
from store.passwords import PasswordRules
from store.ssh_keys import DEFAULT_RSA_BITS, MAX_PRIVATE_KEY, RSA_BITS, key_bits_problem
from triggers.window import DAYS, ChangeWindow, InvalidWindow
from workflows.contracts import CERTIFICATE_KINDS, CLIENT_TRIGGERS, OPERATION_KINDS, TRIGGERS

Name = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/@:-]*$")
OperationKind = Literal[
    "change",
    "verify",
    "reconcile",
    "adopt",
    "set-in-vault",
    "activate",
    "deactivate",
    "jit-create",
    "jit-remove",
]
assert get_args(OperationKind) == OPERATION_KINDS  # the API's list is the workflows' list
LifecycleKind = Literal["activate", "deactivate", "jit-create", "jit-remove"]
# Triggers are one closed list (workflows/contracts.py TRIGGERS); a request may claim only
# CLIENT_TRIGGERS, the others are set by Keyturn itself.
Trigger = Field(
    default="manual",
    description="why the operation is requested; a client may claim manual or a2a only",
    json_schema_extra={"enum": list(CLIENT_TRIGGERS)},
)
TriggerOut = Field(description="why it was requested", json_schema_extra={"enum": list(TRIGGERS)})
# A reference to another object by id. Empty is refused here, with the field named: an empty
# string is falsy, so it would skip the route's existence check and reach the foreign key.
RefId = Field(default=None, min_length=1, max_length=64)


_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _host_or_ip(value: str) -> str:
    """A device address is a DNS host name or an IP literal: nothing a driver would read as a
    URL, a port, a user or an option (``host:22``, ``user@host``, ``-oProxyCommand=…``)."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    labels = value.removesuffix(".").split(".")
    if all(_HOST_LABEL.match(label) for label in labels):
        return value
    raise ValueError("must be a host name (letters, digits, hyphens, dots) or an IP address")


def _no_nul(value: SecretStr) -> SecretStr:
    # No target stores a NUL in a password: C strings cut it there, so what is set would not be
    # what the vault keeps.
    if "\0" in value.get_secret_value():
        raise ValueError("must not contain a NUL character")
    return value


Address = Annotated[str, Field(min_length=1, max_length=253), AfterValidator(_host_or_ip)]
Secret = Annotated[SecretStr, AfterValidator(_no_nul)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceIn(_In):
    name: str = Name
    address: Address
    port: int | None = Field(default=None, ge=1, le=65535, description="executor's default")
    executor: str = Field(default="ssh", min_length=1, max_length=50)
    zone: str = Field(
        default=DEFAULT_ZONE, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-]+$"
    )
    profile: str = Field(default="default", min_length=1, max_length=100)
    host_keys: list[str] = Field(default_factory=list, max_length=20)
    trust_on_first_use: bool = False
    options: dict[str, Any] = Field(default_factory=dict)
    allow_insecure_transport: bool = Field(
        default=False,
        description="let secrets cross an unencrypted or unverified channel (plain http, LDAP "
        "without TLS, sslmode below verify-full...); audited on every operation that uses it",
    )
    max_concurrent_operations: int | None = Field(default=None, ge=1, le=1000)


class DeviceOut(BaseModel):
    id: str
    name: str
    address: str
    port: int
    executor: str
    zone: str
    profile: str
    host_keys: list[str]
    trust_on_first_use: bool
    options: dict[str, Any]
    allow_insecure_transport: bool
    max_concurrent_operations: int | None
    created_at: datetime


Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]  # triggers.window.DAYS
assert get_args(Day) == DAYS


class ChangeWindowIn(_In):
    days: list[Day] = Field(default_factory=lambda: list(get_args(Day)), min_length=1)
    start: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", examples=["22:00"])
    end: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", examples=["02:00"])
    timezone: str = Field(default="UTC", examples=["Europe/Lisbon"])

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ChangeWindow.parse(
                {"days": ["mon"], "start": "00:00", "end": "01:00", "timezone": value}
            )
        except InvalidWindow as exc:
            raise ValueError(str(exc).partition(": ")[2]) from None
        return value


class PolicyIn(_In):
    name: str = Name
    length: int = Field(default=24, ge=8, le=1024)
    lowercase: bool = True
    uppercase: bool = True
    digits: bool = True
    symbols: bool = True
    exclude: str = Field(default="", max_length=200)
    max_attempts: int = Field(default=5, ge=1, le=100)
    retry_interval_seconds: float = Field(default=10.0, ge=0.1, le=86400)
    backoff: float = Field(default=2.0, ge=1.0, le=10.0)
    connect_timeout_seconds: float = Field(default=10.0, ge=0.5, le=300)
    read_timeout_seconds: float = Field(default=30.0, ge=0.5, le=600)
    lockout_budget: int = Field(
        default=3,
        ge=1,
        le=100,
        description="failed logins Keyturn may cause per account per window",
    )
    lockout_window_seconds: float = Field(default=900.0, ge=1, le=86400)
    max_concurrent_operations: int = Field(default=2, ge=1, le=1000, description="per device")
    change_every_seconds: int | None = Field(
        default=None, ge=10, description="expiry: the oldest a current secret may get (null: never)"
    )
    verify_every_seconds: int | None = Field(
        default=None, ge=10, description="verify credentials not verified for this long"
    )
    change_window: ChangeWindowIn | None = Field(
        default=None, description="when automatic triggers may act (null: at any time)"
    )
    jitter_seconds: int = Field(
        default=0, ge=0, le=7 * 86400, description="expiry changes are spread over this long"
    )
    change_after_view_seconds: int | None = Field(
        default=None, ge=0, le=365 * 86400, description="a view asks for a change this much later"
    )
    change_after_session_seconds: int | None = Field(
        default=None,
        ge=0,
        le=365 * 86400,
        description="the end of the last open session asks for a change this much later",
    )
    max_session_wait_seconds: int | None = Field(
        default=None,
        ge=0,
        description="how long an expiry change waits for open sessions (null: until they end)",
    )
    paused: bool = Field(default=False, description="the policy's schedules are paused")
    lock_after_session: bool = Field(
        default=False,
        description="the end of a credential's last open session deactivates it; the next "
        "session's start activates it first",
    )
    key_type: Literal["ed25519", "rsa"] = Field(
        default="ed25519", description="ssh-key credentials: the type of the key pairs made"
    )
    key_bits: int | None = Field(
        default=None,
        description=f"rsa only: {RSA_BITS[0]} to {RSA_BITS[1]} (null: {DEFAULT_RSA_BITS})",
    )

    @model_validator(mode="after")
    def _rules_can_produce_a_password(self) -> PolicyIn:
        problem = PasswordRules(
            self.length, self.lowercase, self.uppercase, self.digits, self.symbols, self.exclude
        ).problem()
        if problem:
            raise ValueError(problem)
        return self

    @field_validator("key_bits")
    @classmethod
    def _key_bits_fit(cls, value: int | None, info: ValidationInfo) -> int | None:
        problem = key_bits_problem(info.data.get("key_type", "ed25519"), value)
        if problem:
            raise ValueError(problem)
        return value


class PolicyPatch(_In):
    """Any field of a policy; an absent field is left as it is."""

    name: str | None = None
    length: int | None = None
    lowercase: bool | None = None
    uppercase: bool | None = None
    digits: bool | None = None
    symbols: bool | None = None
    exclude: str | None = None
    max_attempts: int | None = None
    retry_interval_seconds: float | None = None
    backoff: float | None = None
    connect_timeout_seconds: float | None = None
    read_timeout_seconds: float | None = None
    lockout_budget: int | None = None
    lockout_window_seconds: float | None = None
    max_concurrent_operations: int | None = None
    change_every_seconds: int | None = None
    verify_every_seconds: int | None = None
    change_window: dict[str, Any] | None = None
    jitter_seconds: int | None = None
    change_after_view_seconds: int | None = None
    change_after_session_seconds: int | None = None
    max_session_wait_seconds: int | None = None
    paused: bool | None = None
    lock_after_session: bool | None = None
    key_type: str | None = None
    key_bits: int | None = None


class PolicyOut(PolicyIn):
    model_config = ConfigDict(extra="ignore")
    id: str
    created_at: datetime


class TemplateIn(_In):
    name: str = Name
    executor: str = Field(default="ssh", min_length=1, max_length=50)
    kind: Literal[
        "change", "verify", "activate", "deactivate", "jit-create", "jit-remove",
        "key-install", "key-remove", "task",
    ]  # fmt: skip
    body: str = Field(min_length=1, max_length=100_000)


class TemplateOut(BaseModel):
    id: str
    name: str
    version: int
    executor: str
    kind: str
    body: str
    shipped: bool
    created_at: datetime
    status: str = Field(description="pending, approved, rejected or superseded")
    author: str
    reviewed_by: str | None
    reviewed_at: datetime | None
    review_note: str | None


class TemplateReviewIn(_In):
    note: str | None = Field(default=None, max_length=2000, description="kept with the version")


class TemplateDiffOut(BaseModel):
    name: str
    version: int
    against: int | None = Field(description="the version compared with (null: none before)")
    diff: str = Field(description="unified diff of the bodies")


PrincipalRole = Literal["admin", "operator", "auditor", "app", "template-author", "approver"]


class PrincipalIn(_In):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$")
    role: PrincipalRole
    profiles: list[str] = Field(default_factory=list, max_length=100)
    credential_ids: list[str] = Field(
        default_factory=list, max_length=1000, description="app only: the credentials it reads"
    )
    expires_at: datetime | None = Field(default=None, description="when its first token expires")


class TokenIn(_In):
    expires_at: datetime | None = None


class TokenOut(BaseModel):
    prefix: str
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime


class PrincipalOut(BaseModel):
    id: str
    name: str
    role: str
    profiles: list[str]
    credential_ids: list[str]
    created_by: str
    created_at: datetime
    tokens: list[TokenOut] = Field(default_factory=list)


class IssuedOut(PrincipalOut):
    token: str = Field(description="shown this once: Keyturn keeps only its hash")
    token_prefix: str


class CredentialIn(_In):
    device_id: str = Field(min_length=1, max_length=64)
    username: str = Field(min_length=1, max_length=256)
    secret_type: Literal["password", "ssh-key"] = Field(
        default="password",
        description="ssh-key: the secret is an OpenSSH private key; a change makes a new key "
        "pair, installs its public key in authorized_keys and removes the old one",
    )
    password: Secret | None = Field(
        default=None, min_length=1, max_length=1024, description="the current password"
    )
    private_key: SecretStr | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PRIVATE_KEY,
        description="ssh-key: the current private key, OpenSSH format, unencrypted (write-only)",
    )
    key_targets: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="ssh-key: other devices where the same account must accept the same key",
    )
    key_remove_template: str | None = Field(
        default=None, description="ssh-key: the key-remove template (default: the executor's)"
    )
    change_template: str | None = None
    verify_template: str | None = None
    auth_credential_id: str | None = RefId
    policy_id: str | None = RefId
    profile: str = Field(default="default", min_length=1, max_length=100)
    parent_id: str | None = RefId
    reconcile_credential_id: str | None = RefId
    auto_reconcile: bool = False
    lifecycle_templates: dict[LifecycleKind, str] = Field(
        default_factory=dict,
        description="templates for activate, deactivate, jit-create, jit-remove instead of the "
        "executor's defaults, by kind",
    )

    @field_validator("username")
    @classmethod
    def _printable(cls, value: str) -> str:
        if any(not c.isprintable() for c in value):
            raise ValueError("must contain printable characters only")
        return value


class CredentialPatch(_In):
    """Links that may change after creation; an absent field is left as it is, null clears it."""

    parent_id: str | None = RefId
    reconcile_credential_id: str | None = RefId
    auto_reconcile: bool | None = None
    policy_id: str | None = RefId


class CredentialOut(BaseModel):
    id: str
    device_id: str
    username: str
    profile: str
    change_template: str
    verify_template: str
    auth_credential_id: str | None
    policy_id: str | None
    parent_id: str | None
    reconcile_credential_id: str | None
    auto_reconcile: bool
    sync_state: str
    secret_type: str
    key_targets: list[str]
    key_remove_template: str | None
    current_version_id: str | None = None
    created_at: datetime
    active: bool = Field(description="false once deactivated (locked on its target)")
    jit_until: datetime | None = Field(
        description="a just-in-time account exists until then (null: none is out there)"
    )
    lifecycle_templates: dict[str, str]


class OperationIn(_In):
    kind: OperationKind
    trigger: str = Trigger
    callback_url: str | None = Field(
        default=None,
        max_length=2000,
        description="POSTed the outcome when the operation (and each chained one) ends, signed "
        "per Standard Webhooks; https:// only",
    )

    version_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="adopt: the secret version to make current",
    )
    password: Secret | None = Field(
        default=None,
        max_length=1024,
        description="set-in-vault: the password set on the target by other means (write-only)",
    )
    next_password: Secret | None = Field(
        default=None,
        max_length=1024,
        description="change: the new password, instead of a generated one; must fit the "
        "credential's policy (write-only)",
    )
    ttl_seconds: int | None = Field(
        default=None,
        description="jit-create (required): how long the account lives once created; a "
        "jit-remove ends it then, or at the end of the credential's last session if sooner",
    )
    private_key: SecretStr | None = Field(
        default=None,
        max_length=MAX_PRIVATE_KEY,
        description="set-in-vault of an ssh-key credential: the private key whose public key "
        "was authorized by other means (OpenSSH format, unencrypted; write-only)",
    )

    @field_validator("trigger")
    @classmethod
    def _client_trigger(cls, value: str) -> str:
        if value in CLIENT_TRIGGERS:
            return value
        if value in TRIGGERS:
            raise ValueError(
                f"{value!r} is set by Keyturn alone; a request may claim manual or a2a"
            )
        raise ValueError(f"one of {', '.join(CLIENT_TRIGGERS)}")


class VersionOut(BaseModel):
    id: str
    state: str = Field(description="pending, current, previous or failed")
    operation_id: str | None = Field(description="the operation that made this version")
    created_at: datetime
    changed_at: datetime = Field(description="when its state last changed")
    last_login_ok_at: datetime | None = Field(
        description="the last time a login with this secret was seen to work on the target"
    )
    last_login_ok_operation_id: str | None = Field(description="the operation that saw it")


class VersionSecretOut(BaseModel):
    version_id: str
    state: str
    secret: str = Field(repr=False)  # in the response body only, never in a repr or a log
    public_key: str | None = Field(default=None, description="ssh-key: the secret's public key")


class OperationAccepted(BaseModel):
    operation_id: str
    workflow_id: str
    status: str = Field(description="queued when another operation on the credential is ahead")
    joined: bool = Field(description="true when an operation of this kind was already running")


class AttemptOut(BaseModel):
    number: int
    step: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    detail: str | None
    transcript: str


class ChildOut(BaseModel):
    operation_id: str
    credential_id: str
    kind: str
    status: str


class KeyResultOut(BaseModel):
    device_id: str
    device: str = Field(description="the device's name")
    new_key_installed: bool
    new_key_logs_in: bool
    old_key_removed: bool | None = Field(
        description="null: not tried (the change stopped before); false: still authorized there"
    )
    detail: str | None


class OperationOut(BaseModel):
    id: str
    credential_id: str | None = Field(
        description="the credential it acts on; null for a certificate's action"
    )
    certificate_id: str | None = Field(
        None, description="the certificate a cert-* operation acts on (null otherwise)"
    )
    kind: str = Field(
        description="a credential operation's kind, or a certificate's: "
        + ", ".join(CERTIFICATE_KINDS)
    )
    trigger: str = TriggerOut
    status: str = Field(
        description="queued (behind another operation on the credential), scheduled (accepted, "
        "not started), running, succeeded, failed or canceled"
    )
    waiting_for: str | None = Field(
        None, description="while queued: the operation ahead of this one on the credential"
    )
    workflow_id: str
    resolution: str | None
    error_type: str | None
    error: str | None
    parent_operation_id: str | None
    credential_out_of_sync: bool = Field(description="the vault's secret no longer logs in")
    created_at: datetime
    finished_at: datetime | None
    attempts: list[AttemptOut]
    children: list[ChildOut]
    key_results: list[KeyResultOut] | None = Field(
        None, description="an ssh-key change: what it did on each device (null otherwise)"
    )


class ExecutorOut(BaseModel):
    name: str
    syntax: str
    default_port: int
    default_templates: dict[str, str]
    operation_kinds: list[str] = Field(description="kinds its shipped templates cover")
    templates: list[str] = Field(description="its shipped templates")


class SecretOut(BaseModel):
    # In the response body only, never in a repr or a log. A credential's secret is either a
    # password or (ssh-key) a private key with its public key; the other fields are absent.
    password: str | None = Field(default=None, repr=False)
    private_key: str | None = Field(default=None, repr=False)
    public_key: str | None = None
    version_id: str
    changed_at: datetime = Field(description="when this secret became current")


class SessionEventIn(_In):
    event: Literal["session-start", "session-end"]
    session_id: str = Field(min_length=1, max_length=200)


class SessionOut(BaseModel):
    credential_id: str
    session_id: str
    started_at: datetime
    ended_at: datetime | None
    open_sessions: int = Field(description="sessions of the credential still open")
    change_requested: bool = Field(
        description="this was the last open session and the policy asks for a change after it"
    )
    operation_id: str | None = Field(
        default=None,
        description="the activate (session start on an inactive credential), deactivate "
        "(lock_after_session) or jit-remove (a just-in-time account) this event requested",
    )


class AuditEventOut(BaseModel):
    id: int
    at: datetime
    event: str
    principal: str
    outcome: str
    operation_id: str | None
    credential_id: str | None
    device_id: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    items: list[AuditEventOut] = Field(description="oldest first")
    next_cursor: str = Field(
        description="pass as ?cursor= to read the events after these. The trail is a log one "
        "follows: never null, and an empty page means nothing newer yet"
    )


class HealthOut(BaseModel):
    status: Literal["ok"]

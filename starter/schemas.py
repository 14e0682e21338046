"""Request and response bodies of the HTTP API. Secrets are write-only: no response has one."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from store.passwords import PasswordRules

Name = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/@:-]*$")
OperationKind = Literal["change", "verify", "reconcile"]
Trigger = Literal["manual", "expiry", "view", "session-start", "session-end", "a2a"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceIn(_In):
    name: str = Name
    address: str = Field(min_length=1, max_length=255)
    port: int | None = Field(default=None, ge=1, le=65535, description="executor's default")
    executor: str = Field(default="ssh", min_length=1, max_length=50)
    zone: str = Field(default="default", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-]+$")
    profile: str = Field(default="default", min_length=1, max_length=100)
    host_keys: list[str] = Field(default_factory=list, max_length=20)
    trust_on_first_use: bool = False
    options: dict[str, Any] = Field(default_factory=dict)
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
    max_concurrent_operations: int | None
    created_at: datetime


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

    @model_validator(mode="after")
    def _rules_can_produce_a_password(self) -> PolicyIn:
        problem = PasswordRules(
            self.length, self.lowercase, self.uppercase, self.digits, self.symbols, self.exclude
        ).problem()
        if problem:
            raise ValueError(problem)
        return self


class PolicyOut(PolicyIn):
    model_config = ConfigDict(extra="ignore")
    id: str
    created_at: datetime


class TemplateIn(_In):
    name: str = Name
    executor: str = Field(default="ssh", min_length=1, max_length=50)
    kind: Literal["change", "verify"]
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


class CredentialIn(_In):
    device_id: str
    username: str = Field(min_length=1, max_length=256)
    password: SecretStr = Field(min_length=1, max_length=1024)
    change_template: str | None = None
    verify_template: str | None = None
    auth_credential_id: str | None = None
    policy_id: str | None = None
    profile: str = Field(default="default", min_length=1, max_length=100)
    parent_id: str | None = None
    reconcile_credential_id: str | None = None
    auto_reconcile: bool = False

    @field_validator("username")
    @classmethod
    def _printable(cls, value: str) -> str:
        if any(not c.isprintable() for c in value):
            raise ValueError("must contain printable characters only")
        return value


class CredentialPatch(_In):
    """Links that may change after creation; an absent field is left as it is, null clears it."""

    parent_id: str | None = None
    reconcile_credential_id: str | None = None
    auto_reconcile: bool | None = None
    policy_id: str | None = None


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
    current_version_id: str | None = None
    created_at: datetime


class OperationIn(_In):
    kind: OperationKind
    trigger: Trigger = "manual"
    callback_url: str | None = Field(
        default=None,
        max_length=2000,
        description="POSTed the outcome when the operation (and each chained one) ends, signed "
        "per Standard Webhooks; https:// only",
    )


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


class OperationOut(BaseModel):
    id: str
    credential_id: str
    kind: str
    trigger: str
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


class ExecutorOut(BaseModel):
    name: str
    syntax: str
    default_port: int
    default_templates: dict[str, str]
    operation_kinds: list[str] = Field(description="kinds its shipped templates cover")
    templates: list[str] = Field(description="its shipped templates")


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
    events: list[AuditEventOut]
    next_cursor: str = Field(
        description="pass as ?cursor= to read the events after these (an empty page: none yet)"
    )

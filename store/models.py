"""SQLModel tables. Secret values appear only as ciphertext (SecretVersion.ciphertext)."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from store.passwords import PasswordRules


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class SecretState(enum.StrEnum):
    PENDING = "pending"
    CURRENT = "current"
    PREVIOUS = "previous"
    FAILED = "failed"


class OperationStatus(enum.StrEnum):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.CANCELED)


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
    zone: str = "default"
    profile: str = "default"
    host_keys: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    trust_on_first_use: bool = False
    options: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
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


class Credential(SQLModel, table=True):
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
    sync_state: SyncState = SyncState.IN_SYNC
    created_at: datetime = Field(default_factory=utcnow)


class SecretVersion(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    credential_id: str = Field(foreign_key="credential.id", index=True)
    state: SecretState
    key_id: str
    ciphertext: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    operation_id: str | None = Field(default=None, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    changed_at: datetime = Field(default_factory=utcnow)


class Operation(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True)
    credential_id: str = Field(foreign_key="credential.id", index=True)
    kind: str
    trigger: str = "manual"
    status: OperationStatus = OperationStatus.SCHEDULED
    workflow_id: str = Field(index=True)
    pending_version_id: str | None = None
    error: str | None = None
    error_type: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


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


class AuditEvent(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    event: str
    operation_id: str | None = Field(default=None, index=True)
    credential_id: str | None = Field(default=None, index=True)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))

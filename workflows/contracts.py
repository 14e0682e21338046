"""Workflow and activity inputs and outputs, shared with the starter.

They carry ids and outcomes only, never a secret (DESIGN.md invariant 1).
"""

from __future__ import annotations

from dataclasses import dataclass

WORKFLOW_NAME = "KeyturnOperation"
OPERATION_KINDS = ("change", "verify", "reconcile")
# An activity failure carrying this detail provably never reached the target in any attempt.
NOTHING_SENT_DETAIL = "nothing-sent"


def operation_workflow_id(kind: str, credential_id: str) -> str:
    """Fixed per credential and kind, so a second request joins the first (invariant 4)."""
    return f"keyturn-{kind}-{credential_id}"


@dataclass(frozen=True)
class OperationInput:
    operation_id: str
    credential_id: str
    device_id: str
    kind: str
    trigger: str = "manual"


@dataclass(frozen=True)
class OperationPlan:
    """What prepare decided: where executor calls run and how they retry."""

    zone_task_queue: str
    max_attempts: int
    retry_interval_seconds: float
    backoff: float
    step_timeout_seconds: float
    can_reconcile: bool = False  # a reconcile credential is set
    auto_reconcile: bool = False  # ... and the credential asks for it to be used on its own


@dataclass(frozen=True)
class StepInput:
    operation_id: str
    via_reconcile: bool = False  # connect with the reconcile credential and its template


@dataclass(frozen=True)
class ChildStart:
    """A chained operation to start once the parent's change is committed."""

    operation: OperationInput
    workflow_id: str


@dataclass(frozen=True)
class ChildrenRequest:
    operation_id: str
    reason: str  # "parent-changed": the credential's children; "reconcile": itself


@dataclass(frozen=True)
class ChildNotStarted:
    operation_id: str
    reason: str


@dataclass(frozen=True)
class ChangeOutcome:
    already_applied: bool  # a retry found the pending secret already live (probe)


@dataclass(frozen=True)
class ProbeOutcome:
    """Which secret logs in on the target: how the outcome of a change is known."""

    pending_works: bool
    current_works: bool | None  # None: not asked, because pending worked


@dataclass(frozen=True)
class CommitInput:
    operation_id: str
    resolution: str


@dataclass(frozen=True)
class FinishInput:
    operation_id: str
    status: str
    resolution: str  # how the outcome was established, for the audit trail
    error_type: str | None = None
    error: str | None = None
    pending_version_fate: str | None = None  # "failed" when the target surely never took it
    out_of_sync: bool = False


@dataclass(frozen=True)
class OperationResult:
    operation_id: str
    status: str
    resolution: str
    error_type: str | None = None
    error: str | None = None
    children: tuple[str, ...] = ()  # operation ids of the chained operations started

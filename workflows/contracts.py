"""Workflow and activity inputs and outputs, shared with the starter.

They carry ids and outcomes only, never a secret (DESIGN.md invariant 1).

No ``from __future__ import annotations`` here: the SDK reads a dataclass's field types with
``typing.get_type_hints`` for every payload it decodes, and string annotations were compiled
and evaluated again each time (about 2% of the worker's CPU). A class is therefore defined
before the classes whose fields name it.
"""

import enum
from dataclasses import dataclass
from datetime import timedelta

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

WORKFLOW_NAME = "KeyturnOperation"
DEVICE_SLOTS_WORKFLOW = "KeyturnDeviceSlots"
CALLBACK_WORKFLOW = "KeyturnCallback"
SWEEP_WORKFLOW = "KeyturnSweep"
DELAYED_OPERATION_WORKFLOW = "KeyturnDelayedOperation"
OPERATION_KINDS = (
    "change",
    "verify",
    "reconcile",
    "adopt",
    "set-in-vault",
    "activate",
    "deactivate",
    "jit-create",
    "jit-remove",
)
# Kinds that switch an account on or off (or remove it) and leave its secret alone: each runs
# the executor's template of that kind through the auth credential, then logs in with the
# current secret to see the account in the state asked for.
SWITCH_KINDS = ("activate", "deactivate", "jit-remove")
# Kinds that run a template of their own kind (its ``# kind:`` header), always through the
# credential's auth credential: an account cannot unlock or create itself.
LIFECYCLE_KINDS = ("activate", "deactivate", "jit-create", "jit-remove")
# A just-in-time account lives at least this long: shorter could end before it is used.
JIT_MIN_TTL_SECONDS = 5
JIT_MAX_TTL_SECONDS = 30 * 24 * 3600
# Kinds that make a chosen secret current once it is seen to log in, and change nothing else.
CHOSEN_SECRET_KINDS = ("adopt", "set-in-vault")
# Why an operation was requested: one closed list, used by the API, the search attribute and the
# store alike.
TRIGGERS = (
    "manual",
    "a2a",
    "expiry",
    "verify-schedule",
    "view",
    "session-start",
    "session-end",
    "parent-changed",
    "out-of-sync",
    "task-schedule",
    "certificate-renewal",
    "restore",  # a verify requested on start after `keyturn restore`
)
# What a client may claim in a request body; every other trigger is set by Keyturn alone.
CLIENT_TRIGGERS = ("manual", "a2a")
# What a policy's schedules sweep for: (schedule purpose, operation kind, trigger).
SWEEP_EXPIRY = "expiry"
SWEEP_VERIFY = "verify"
SWEEPS = {SWEEP_EXPIRY: ("change", "expiry"), SWEEP_VERIFY: ("verify", "verify-schedule")}

# Search attributes make operations findable in the Web UI ("KeyturnCredentialId = '…'").
SA_CREDENTIAL = SearchAttributeKey.for_keyword("KeyturnCredentialId")
SA_DEVICE = SearchAttributeKey.for_keyword("KeyturnDeviceId")
SA_KIND = SearchAttributeKey.for_keyword("KeyturnOperationKind")
SA_TRIGGER = SearchAttributeKey.for_keyword("KeyturnTrigger")
SA_STATUS = SearchAttributeKey.for_keyword("KeyturnStatus")
SA_OPERATION = SearchAttributeKey.for_keyword("KeyturnOperationId")
SEARCH_ATTRIBUTES = (SA_CREDENTIAL, SA_DEVICE, SA_KIND, SA_TRIGGER, SA_STATUS, SA_OPERATION)
# An activity failure carrying this detail provably never reached the target in any attempt.
NOTHING_SENT_DETAIL = "nothing-sent"


class FailureKind(enum.StrEnum):
    """How an executor step failed: the activity error type, which the workflow decides on.
    Stable names: they are in recorded histories and in the operations' ``error_type``."""

    CONFIGURATION = "ConfigurationError"  # found before connecting: nothing sent, no login
    CONNECT_FAILED = "ConnectFailed"
    AUTHENTICATION_FAILED = "AuthenticationFailed"
    TEMPLATE_FAILED = "TemplateFailed"
    HOST_KEY_MISMATCH = "HostKeyMismatch"
    CHANGE_REJECTED = "ChangeRejected"
    OUTCOME_UNKNOWN = "OutcomeUnknown"


# Retrying these cannot help (and would spend the account's lockout budget).
NON_RETRYABLE_KINDS = (
    FailureKind.AUTHENTICATION_FAILED,
    FailureKind.TEMPLATE_FAILED,
    FailureKind.HOST_KEY_MISMATCH,
    FailureKind.CHANGE_REJECTED,
    FailureKind.CONFIGURATION,
)
# Failures that prove the change never reached the target: no probe needed.
NOTHING_SENT_KINDS = (
    FailureKind.CONNECT_FAILED,
    FailureKind.HOST_KEY_MISMATCH,
    FailureKind.AUTHENTICATION_FAILED,
    FailureKind.CONFIGURATION,
)


def operation_workflow_id(kind: str, credential_id: str) -> str:
    """Fixed per credential and kind, so a second request joins the first (invariant 4)."""
    return f"keyturn-{kind}-{credential_id}"


def chosen_secret_workflow_id(kind: str, credential_id: str, operation_id: str) -> str:
    """A request that names its secret (a version to adopt, a value supplied by an
    administrator) is its own operation: joining another of its kind would drop that secret."""
    return f"keyturn-{kind}-{credential_id}-{operation_id}"


def device_slots_workflow_id(device_id: str) -> str:
    """One semaphore workflow per device, alive only while operations use or wait for it."""
    return f"keyturn-slots-{device_id}"


def schedule_id(purpose: str, policy_id: str) -> str:
    """One Temporal Schedule per policy and purpose: server state grows with policies."""
    return f"keyturn-{purpose}-{policy_id}"


def sweep_workflow_id(purpose: str, policy_id: str) -> str:
    """The schedule appends each run's time to it."""
    return f"keyturn-sweep-{purpose}-{policy_id}"


def delayed_operation_workflow_id(kind: str, credential_id: str) -> str:
    """Fixed per credential and kind: a second delayed request while one waits is the same one."""
    return f"keyturn-delayed-{kind}-{credential_id}"


@dataclass(frozen=True)
class OperationInput:
    """What starts an operation. Only the credential and the kind are needed: a program with
    nothing but a Temporal client can start one, and it behaves as one requested through the
    API (the workflow registers its own row and queues at the credential's gate)."""

    credential_id: str
    kind: str = "change"
    trigger: str = "manual"
    operation_id: str = ""  # empty: the workflow names the operation itself
    device_id: str = ""  # informative; the store's credential is what counts
    parent_operation_id: str | None = None  # set on a chained operation
    # The secret version to act with instead of a generated one (adopt: the version to adopt;
    # set-in-vault or a change's next_password: the value stored encrypted by the request path;
    # a verify after a restore: the pending secret of the operation that was in flight). An id:
    # a secret never enters a workflow payload.
    version_id: str = ""
    # The requester asked to be told the outcome: the URL itself stays in the store.
    callback: bool = False
    requested_by: str | None = None  # the principal who asked; None: Keyturn itself
    # jit-create: how long the account lives once created (a delayed jit-remove ends it).
    ttl_seconds: int = 0
    # Which revision of the workflow's steps the starter asked for (OPERATION_REVISION). The
    # start input is in the history, so the workflow can tell a new history from an old one
    # without a patch marker (two events per operation). 0: a starter that does not say, and
    # every history from before it; such a workflow finds out with patch markers, as before.
    # Newer than the worker's: its workflow task fails until a newer worker takes it (which
    # protects a later revision only once every worker runs a release with this guard).
    revision: int = 0


# Revision 1: the operation begins in one step (register, prepare and its first device slot:
# ``steps.begin``) and its history records no patch marker.
OPERATION_REVISION = 1


def callback_workflow_id(operation_id: str) -> str:
    """One callback delivery per operation: its webhook-id stays the same across retries."""
    return f"keyturn-callback-{operation_id}"


@dataclass(frozen=True)
class CallbackInput:
    operation_id: str
    # How many callback URLs the operation closed with: the callback workflow POSTs to each.
    # 0: started by an older release, which told the one URL an operation then had.
    receivers: int = 0
    # The URL one delivery POSTs to (1, 2, …); 0: that older release's single delivery.
    position: int = 0


def initial_search_attributes(
    op: OperationInput, status: str = "scheduled"
) -> TypedSearchAttributes:
    pairs = [
        SearchAttributePair(SA_CREDENTIAL, op.credential_id),
        SearchAttributePair(SA_DEVICE, op.device_id),
        SearchAttributePair(SA_KIND, op.kind),
        SearchAttributePair(SA_TRIGGER, op.trigger),
        SearchAttributePair(SA_STATUS, status),
    ]
    if op.operation_id:
        pairs.append(SearchAttributePair(SA_OPERATION, op.operation_id))
    return TypedSearchAttributes(pairs)


@dataclass(frozen=True)
class Admission:
    """The operation as registered at its credential's gate."""

    operation_id: str
    device_id: str
    queued: bool  # another operation on the credential is ahead: wait for its signal
    waiting_for: str | None
    order_key: str  # when it was requested: device slots are granted in this order


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
    device_id: str = ""
    device_capacity: int = 0  # operations allowed on the device at once (0: not known)
    # How long an executor step may go without a heartbeat (settings.lost_worker_seconds).
    # 0: a plan made before the setting, whose steps used the 10 s the workflows name.
    heartbeat_timeout_seconds: float = 0.0

    @property
    def heartbeat_timeout(self) -> timedelta:
        return timedelta(seconds=self.heartbeat_timeout_seconds or 10.0)


@dataclass(frozen=True)
class SlotClaim:
    """The answer to a slot request: held now, or wait for ``slot_granted`` (whoever gives a
    slot back signals the waiter it hands it to), asking again every ``check_after_seconds`` in
    case a holder's workflow ended without giving its slot back."""

    held: bool
    check_after_seconds: int = 300


@dataclass(frozen=True)
class Beginning:
    """The answer to ``steps.begin``: the operation as registered and, if it holds its
    credential's gate, as prepared, with its first device slot asked for (token
    ``slot_token(operation_id, 1)``). ``plan`` None: it is queued (or prepare refused it), and
    the workflow prepares and claims later, one step at a time."""

    admission: Admission
    plan: OperationPlan | None = None
    slot: SlotClaim | None = None


def slot_token(operation_id: str, nth: int) -> str:
    """The token of an operation's ``nth`` device-slot claim: unique, so claims and releases
    can be retried."""
    return f"{operation_id}/{nth}"


@dataclass(frozen=True)
class RegisterInput:
    operation_id: str
    credential_id: str
    kind: str
    trigger: str
    workflow_id: str
    run_id: str
    parent_operation_id: str | None = None
    source_version_id: str = ""  # OperationInput.version_id
    requested_by: str | None = None
    ttl_seconds: int = 0  # OperationInput.ttl_seconds


@dataclass(frozen=True)
class WorkflowRef:
    """A workflow run to signal."""

    workflow_id: str
    run_id: str | None


@dataclass(frozen=True)
class GateCheck:
    operation_id: str


@dataclass(frozen=True)
class Departure:
    """An ended operation has left its credential's gate and closed its callback URLs: the
    operation to tell its turn has come, and how many requesters to tell the outcome."""

    follower: WorkflowRef | None
    receivers: int


@dataclass(frozen=True)
class SlotRequest:
    """Claim one of a device's slots (store/device_slots.py): held at once if one is free, else
    granted later by a ``slot_granted`` signal. (Operations of earlier releases asked the
    device's semaphore workflow, workflows/device_slots.py, which always signalled.)"""

    device_id: str
    token: str  # unique per acquisition: releases and duplicate requests are idempotent
    holder: WorkflowRef
    capacity: int
    order_key: str


@dataclass(frozen=True)
class SlotRelease:
    device_id: str
    token: str


@dataclass(frozen=True)
class SlotsState:
    """The semaphore's whole state, carried across continue-as-new."""

    device_id: str
    capacity: int = 1
    holders: tuple[SlotRequest, ...] = ()
    waiters: tuple[SlotRequest, ...] = ()


@dataclass(frozen=True)
class CommitInput:
    operation_id: str
    resolution: str
    # Compare-and-set: commit only if the vault's current version is still the one prepare
    # read. ``adopt``: a probe has just shown the pending secret is what the target has.
    adopt: bool = False
    status: str = "succeeded"  # "canceled" when a cancel came after the change was sent


@dataclass(frozen=True)
class StepInput:
    operation_id: str
    via_reconcile: bool = False  # connect with the reconcile credential and its template
    attempt: int = 0  # the workflow's attempt number (0: Temporal's, for older workflows)
    login_only: bool = False  # probe by logging in, without running the verify template
    # A change that succeeds goes on to verify the new secret with a fresh login, in the same
    # activity: one task and one job load fewer per change. False for histories before it.
    verify_after_change: bool = False
    # The device slot this step holds: a change that verifies gives it back in the transaction
    # that records the verify (nothing else follows on the device), and says so in its outcome,
    # so the workflow needs no step of its own to give it back. None: the workflow gives it back.
    slot: SlotRelease | None = None
    # A change that verifies commits too, in that same transaction, with this input, unless the
    # change was found already applied (the workflow's resolution then says so, and it commits
    # itself). None: the workflow commits in a step of its own, as every release before did.
    commit: CommitInput | None = None
    # A change that commits also leaves the credential's gate in that transaction (the next
    # operation on the credential is told its turn by the step) and closes its callback URLs.
    # False: the workflow departs in a step of its own.
    depart: bool = False


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
class CommitOutcome:
    committed: bool
    detail: str = ""
    # The chained operations a committed change starts, planned in the commit's transaction
    # (one local activity fewer). None from a release before it, or a commit that was already
    # done: the workflow then asks plan_children, as it did.
    children: tuple[ChildStart, ...] | None = None
    # A commit that found the operation ended already: how it ended (a change step that
    # committed, its answer lost). Empty from a release before it, or a commit made now.
    found_status: str = ""
    found_resolution: str = ""


@dataclass(frozen=True)
class ChangeOutcome:
    already_applied: bool  # a retry found the pending secret already live (probe)
    # With StepInput.verify_after_change: True when the new secret then logged in (the verify
    # step is done); None when the verify could not say (the workflow probes, as before).
    verified: bool | None = None
    # The step gave back its device slot (StepInput.slot). False in histories before it.
    slot_given_back: bool = False
    # The commit the step made (StepInput.commit): the workflow runs no commit step of its own.
    # None: it did not commit (or an earlier release ran it), and the workflow commits.
    committed: CommitOutcome | None = None
    # It left the credential's gate with the commit (StepInput.depart), and how many requesters
    # the workflow is to tell the outcome. False: the workflow departs.
    departed: bool = False
    receivers: int = 0


@dataclass(frozen=True)
class ProbeOutcome:
    """Which secret logs in on the target: how the outcome of a change is known."""

    pending_works: bool
    current_works: bool | None  # None: not asked, because pending worked


@dataclass(frozen=True)
class FinishInput:
    operation_id: str
    status: str
    resolution: str  # how the outcome was established, for the audit trail
    error_type: str | None = None
    error: str | None = None
    pending_version_fate: str | None = None  # "failed" when the target surely never took it
    out_of_sync: bool = False
    # activate, deactivate, jit-remove: whether the current secret logged in at the end (None:
    # not asked); the credential's "active" follows it, whatever the operation's status.
    login_works: bool | None = None


@dataclass(frozen=True)
class OperationResult:
    operation_id: str
    status: str
    resolution: str
    error_type: str | None = None
    error: str | None = None
    children: tuple[str, ...] = ()  # operation ids of the chained operations started


@dataclass(frozen=True)
class SweepInput:
    """One run of a policy's schedule. ``as_of`` and ``cursor`` are set when the sweep continues
    as new: what is due is decided once, as of the sweep's start, and paged through in order."""

    policy_id: str
    purpose: str  # SWEEP_EXPIRY or SWEEP_VERIFY
    page_size: int = 200
    as_of: str = ""  # ISO time; empty: the sweep's start
    cursor: str = ""  # the last credential handled: "<iso time>|<id>"
    requested: int = 0  # operations requested by the earlier runs of this sweep


@dataclass(frozen=True)
class DueQuery:
    policy_id: str
    purpose: str
    as_of: str
    cursor: str
    limit: int


@dataclass(frozen=True)
class DuePage:
    credential_ids: tuple[str, ...]
    cursor: str  # pass it back for the next page; empty: no more
    stop: str = ""  # why the sweep stops now (policy paused, gone, outside its window)


@dataclass(frozen=True)
class DueRequests:
    policy_id: str
    purpose: str
    as_of: str
    credential_ids: tuple[str, ...]


@dataclass(frozen=True)
class DelayedOperation:
    """An operation to request later (a view, a session's end, an expiry spread by jitter). It
    holds no gate while it waits, and a change committed after ``since`` satisfies it."""

    credential_id: str
    kind: str
    trigger: str
    since: str  # ISO time of the event that asked for it


@dataclass(frozen=True)
class JitRemoval:
    """After a jit-create committed: remove the account ``ttl_seconds`` after it was created."""

    operation_id: str
    ttl_seconds: int


@dataclass(frozen=True)
class DelayedOutcome:
    outcome: str  # what happened, for the workflow's result
    retry_in_seconds: float | None = None  # outside the change window: ask again then


# -- Tasks (workflows/task_run.py): a task's run, one child per credential it runs as. ---------
TASK_RUN_WORKFLOW = "KeyturnTaskRun"
TASK_TARGET_WORKFLOW = "KeyturnTaskTarget"
# A task's run is an operation of this kind on each credential: it queues at the credential's
# gate like any other, and shows among its operations. Not requested through the operations
# route (OPERATION_KINDS): a task's run is.
TASK_KIND = "task"
# Characters of a target's (redacted) output kept in the workflow's result; the store keeps it
# whole. History stays small whatever a command prints.
TASK_OUTPUT_IN_RESULT = 4096


def task_schedule_id(task_id: str) -> str:
    return f"keyturn-task-{task_id}"


def task_run_workflow_id(name: str) -> str:
    """A run requested by hand: its run id. A scheduled one: the task id, to which the schedule
    appends each run's time."""
    return f"keyturn-task-run-{name}"


def task_target_workflow_id(run_id: str, credential_id: str) -> str:
    return f"keyturn-task-{run_id}-{credential_id}"


@dataclass(frozen=True)
class TaskRunInput:
    """What starts a task's run: the task, and for a run requested by hand the run the request
    stored (with its checked parameters). A scheduled run names none: the workflow does."""

    task_id: str
    run_id: str = ""
    trigger: str = "task-schedule"
    requested_by: str | None = None


@dataclass(frozen=True)
class TaskRunStart:
    task_id: str
    run_id: str
    trigger: str
    workflow_id: str
    requested_by: str | None = None


@dataclass(frozen=True)
class TaskTarget:
    credential_id: str
    device_id: str
    operation_id: str


@dataclass(frozen=True)
class TaskRunPlan:
    run_id: str
    targets: list[TaskTarget]
    refused: str = ""  # why the run cannot start (its parameters no longer fit, say): it failed


@dataclass(frozen=True)
class TaskTargetInput:
    run_id: str
    credential_id: str
    operation_id: str
    trigger: str
    requested_by: str | None = None


@dataclass(frozen=True)
class TaskStep:
    run_id: str
    credential_id: str
    operation_id: str


@dataclass(frozen=True)
class TaskOutcome:
    """What the task did on one target: the start of its redacted output (the store keeps it
    whole), its exit status, or why it could not run."""

    status: str  # succeeded (exit status 0, or none to report) or failed
    exit_status: int | None = None
    output: str = ""
    output_truncated: bool = False
    error_type: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class TaskTargetResult:
    credential_id: str
    operation_id: str
    status: str
    exit_status: int | None = None
    output: str = ""
    output_truncated: bool = False


@dataclass(frozen=True)
class TaskRunEnd:
    run_id: str
    canceled: bool = False


@dataclass(frozen=True)
class TaskRunResult:
    run_id: str
    status: str
    results: list[TaskTargetResult]


# --- Certificates (workflows/certificate.py) ---------------------------------------------------
CERTIFICATE_WORKFLOW = "KeyturnCertificate"
CERTIFICATE_RENEWAL_WORKFLOW = "KeyturnCertificateRenewal"
# Each action on a certificate is an operation of its own kind, acting on no credential.
CERTIFICATE_KINDS = ("cert-request", "cert-sign", "cert-revoke", "cert-publish")
# What a request may ask of a certificate's workflow: request (make a key and a CSR, wait for
# approval if needed, sign, publish; a renewal is a request again), publish, revoke.
CERT_REQUEST, CERT_PUBLISH, CERT_REVOKE = "request", "publish", "revoke"
CERTIFICATE_ACTIONS = (CERT_REQUEST, CERT_PUBLISH, CERT_REVOKE)
CERT_APPROVE_UPDATE = "approve"


def certificate_workflow_id(certificate_id: str) -> str:
    """Fixed per certificate: one action at a time on it (a second is refused while one runs)."""
    return f"keyturn-cert-{certificate_id}"


def certificate_renewal_schedule_id(task_queue: str) -> str:
    """One renewal schedule per deployment (its task queue)."""
    return f"keyturn-certificate-renewal-{task_queue}"


@dataclass(frozen=True)
class CertificateInput:
    """What starts a certificate's workflow: the action and the id of its first operation."""

    certificate_id: str
    action: str
    operation_id: str
    trigger: str = "manual"
    requested_by: str | None = None
    reason: str = ""  # revoke: why (an RFC 5280 reason name, or words of the requester)


@dataclass(frozen=True)
class CertStep:
    """One operation of a certificate's workflow, as its activities see it."""

    operation_id: str
    certificate_id: str
    kind: str
    trigger: str = "manual"
    requested_by: str | None = None
    workflow_id: str = ""
    reason: str = ""


@dataclass(frozen=True)
class CertRequested:
    requires_approval: bool


@dataclass(frozen=True)
class CertApproval:
    principal: str
    operation_id: str = ""
    certificate_id: str = ""


@dataclass(frozen=True)
class PublishTarget:
    """One publish_to entry of a certificate, and the task queue of its device's zone."""

    index: int
    device_id: str
    task_queue: str
    device_capacity: int = 0  # operations allowed on the device at once (its slots)


@dataclass(frozen=True)
class PublishStep:
    operation_id: str
    certificate_id: str
    index: int


@dataclass(frozen=True)
class PublishOutcome:
    device_id: str
    served_matches: bool  # the TLS port served the certificate just installed


@dataclass(frozen=True)
class CertFinish:
    operation_id: str
    certificate_id: str
    kind: str
    status: str  # succeeded | failed
    error_type: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class CertificateOutcome:
    status: str  # succeeded | failed
    operation_ids: list[str]


@dataclass(frozen=True)
class RenewalSweep:
    """One run of the renewal schedule: renew what is due as of its start."""

    as_of: str = ""

"""The figures of the dashboard page (/ui/), read from the store in one pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import select as sa_select
from sqlmodel import Session, col, func, select

from store.models import Credential, Device, Operation, OperationStatus, Policy, SyncState, as_utc
from store.queries import within_profiles

WINDOW = timedelta(hours=24)
BUCKET = timedelta(hours=1)
ENDED = (OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.CANCELED)
UPCOMING = 20  # the soonest expiries shown


@dataclass
class Bucket:
    start: datetime
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0


@dataclass
class Failures:
    key: str  # the executor's name or the device's id
    label: str
    count: int


@dataclass
class OutOfSync:
    credential_id: str
    username: str
    device_name: str
    last_operation_id: str | None


@dataclass
class Expiry:
    credential_id: str
    username: str
    device_name: str
    policy_name: str
    due_at: datetime  # when its current secret reaches the policy's change_every_seconds
    paused: bool  # the policy's schedules are paused: nothing will happen at due_at


@dataclass
class Summary:
    window_start: datetime
    buckets: list[Bucket]
    failures_by_executor: list[Failures]
    failures_by_device: list[Failures]
    in_flight: int
    queued: int
    out_of_sync: list[OutOfSync] = field(default_factory=list)
    upcoming_expiries: list[Expiry] = field(default_factory=list)


def summary(
    db: Session, now: datetime | None = None, profiles: Sequence[str] | None = None
) -> Summary:
    """``profiles``: count only the devices of these (None: every device)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    end = now.replace(minute=0, second=0, microsecond=0) + BUCKET
    start = end - WINDOW
    buckets = [Bucket(start + BUCKET * i) for i in range(int(WINDOW / BUCKET))]
    # Five columns: past sqlmodel's typed select, so SQLAlchemy's.
    ended = db.execute(
        sa_select(
            col(Operation.status),
            col(Operation.finished_at),
            col(Device.executor),
            col(Device.id),
            col(Device.name),
        )
        .join(Credential, col(Credential.id) == col(Operation.credential_id))
        .join(Device, col(Device.id) == col(Credential.device_id))
        .where(col(Operation.status).in_(ENDED), col(Operation.finished_at) >= start)
        .where(within_profiles(Device.profile, profiles))
    ).all()
    by_executor: dict[str, int] = {}
    by_device: dict[str, tuple[str, int]] = {}
    for status, finished, executor, device_id, device_name in ended:
        assert finished is not None
        at = as_utc(finished)
        bucket = buckets[min(int((at - start) / BUCKET), len(buckets) - 1)]
        setattr(bucket, str(status), getattr(bucket, str(status)) + 1)
        if status == OperationStatus.FAILED:
            by_executor[executor] = by_executor.get(executor, 0) + 1
            by_device[device_id] = (device_name, by_device.get(device_id, ("", 0))[1] + 1)
    counts = dict(
        db.exec(
            select(Operation.status, func.count())
            .join(Credential, col(Credential.id) == col(Operation.credential_id))
            .join(Device, col(Device.id) == col(Credential.device_id))
            .where(within_profiles(Device.profile, profiles))
            .where(
                col(Operation.status).in_(
                    (OperationStatus.QUEUED, OperationStatus.SCHEDULED, OperationStatus.RUNNING)
                )
            )
            .group_by(Operation.status)
        ).all()
    )
    return Summary(
        window_start=start,
        buckets=buckets,
        failures_by_executor=[
            Failures(name, name, count)
            for name, count in sorted(by_executor.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        failures_by_device=[
            Failures(device_id, name, count)
            for device_id, (name, count) in sorted(
                by_device.items(), key=lambda kv: (-kv[1][1], kv[1][0])
            )
        ],
        in_flight=counts.get(OperationStatus.SCHEDULED, 0) + counts.get(OperationStatus.RUNNING, 0),
        queued=counts.get(OperationStatus.QUEUED, 0),
        out_of_sync=_out_of_sync(db, profiles),
        upcoming_expiries=_upcoming_expiries(db, profiles),
    )


def _out_of_sync(db: Session, profiles: Sequence[str] | None) -> list[OutOfSync]:
    rows = db.exec(
        select(Credential, Device)
        .join(Device, col(Device.id) == col(Credential.device_id))
        .where(Credential.sync_state == SyncState.OUT_OF_SYNC)
        .where(within_profiles(Device.profile, profiles))
        .order_by(col(Device.name), col(Credential.username))
    ).all()
    found = []
    for credential, device in rows:
        last = db.exec(
            select(Operation.id)
            .where(Operation.credential_id == credential.id)
            .order_by(col(Operation.created_at).desc())
        ).first()
        found.append(OutOfSync(credential.id, credential.username, device.name, last))
    return found


def _upcoming_expiries(db: Session, profiles: Sequence[str] | None) -> list[Expiry]:
    """The soonest due changes of every policy with an expiry. Per policy, its oldest secrets
    come first in the index the expiry sweeps read (policy_id, secret_changed_at, id): a few
    rows per policy whatever the number of credentials."""
    found = []
    for policy in db.exec(select(Policy).where(col(Policy.change_every_seconds).is_not(None))):
        assert policy.change_every_seconds is not None
        period = timedelta(seconds=policy.change_every_seconds)
        rows = db.exec(
            select(Credential, Device)
            .join(Device, col(Device.id) == col(Credential.device_id))
            .where(Credential.policy_id == policy.id)
            .where(within_profiles(Device.profile, profiles))
            .order_by(col(Credential.secret_changed_at), col(Credential.id))
            .limit(UPCOMING)
        ).all()
        for credential, device in rows:
            changed = as_utc(credential.secret_changed_at)
            found.append(
                Expiry(
                    credential.id,
                    credential.username,
                    device.name,
                    policy.name,
                    changed + period,
                    policy.paused,
                )
            )
    return sorted(found, key=lambda e: (e.due_at, e.credential_id))[:UPCOMING]

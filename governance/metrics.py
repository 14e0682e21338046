"""Prometheus metrics, read from the store when scraped: what every worker and API process has
recorded, whichever process answers ``GET /metrics``.

Counters are counts of rows that only ever grow (ended operations, attempts), so they are
monotonic across restarts and processes. The Temporal SDK's own worker metrics are served by each
worker on KEYTURN_WORKER_METRICS_ADDRESS (keyturn/temporal.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from store import siem_outbox
from store.models import Attempt, Credential, Device, Operation, OperationStatus, SyncState

ENDED = (OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.CANCELED)
IN_FLIGHT = (OperationStatus.SCHEDULED, OperationStatus.RUNNING)
ATTEMPT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
OPERATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0)
LOCKOUT_WAIT = "LockoutBudgetSpent"  # an attempt that waited for the lockout window


class StoreCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        with Session(self._engine) as db:
            yield _operations_total(db)
            yield _attempt_durations(db)
            yield _operation_durations(db)
            yield from _gauges(db)
            lockout = CounterMetricFamily(
                "keyturn_lockout_waits",
                "Attempts that found the account's lockout budget spent and waited",
            )
            lockout.add_metric(
                [],
                db.exec(
                    select(func.count()).select_from(Attempt).where(Attempt.outcome == LOCKOUT_WAIT)
                ).one(),
            )
            yield lockout
            depth = GaugeMetricFamily(
                "keyturn_siem_outbox_depth",
                "Audit events waiting to be sent, per SIEM destination",
                labels=["destination"],
            )
            for destination, waiting in sorted(siem_outbox.depths(db).items()):
                depth.add_metric([destination], waiting)
            yield depth


def registry(engine: Engine) -> CollectorRegistry:
    metrics = CollectorRegistry(auto_describe=False)
    metrics.register(StoreCollector(engine))
    return metrics


def _operations_total(db: Session) -> CounterMetricFamily:
    family = CounterMetricFamily(
        "keyturn_operations",
        "Operations that ended, by kind, trigger, executor and status",
        labels=["kind", "trigger", "executor", "status"],
    )
    # Five columns: past sqlmodel's typed select, so SQLAlchemy's.
    rows = db.execute(
        sa_select(
            col(Operation.kind),
            col(Operation.trigger),
            col(Device.executor),
            col(Operation.status),
            func.count(),
        )
        .join(Credential, col(Credential.id) == col(Operation.credential_id))
        .join(Device, col(Device.id) == col(Credential.device_id))
        .where(col(Operation.status).in_(ENDED))
        .group_by(
            col(Operation.kind), col(Operation.trigger), col(Device.executor), col(Operation.status)
        )
    ).all()
    for kind, trigger, executor, status, count in rows:
        family.add_metric([kind, trigger, executor, str(status)], count)
    return family


def _attempt_durations(db: Session) -> HistogramMetricFamily:
    rows = db.exec(
        select(Attempt.step, Attempt.started_at, Attempt.finished_at).where(
            col(Attempt.finished_at).is_not(None)
        )
    ).all()
    by_step: dict[str, list[float]] = {}
    for step, started, finished in rows:
        by_step.setdefault(step, []).append(_seconds(started, finished))
    family = HistogramMetricFamily(
        "keyturn_attempt_duration_seconds",
        "How long executor attempts took, by step (change, verify, probe)",
        labels=["step"],
    )
    for step, values in sorted(by_step.items()):
        family.add_metric([step], *_histogram(values, ATTEMPT_BUCKETS))
    return family


def _operation_durations(db: Session) -> HistogramMetricFamily:
    rows = db.exec(
        select(Operation.kind, Operation.created_at, Operation.finished_at).where(
            col(Operation.finished_at).is_not(None)
        )
    ).all()
    by_kind: dict[str, list[float]] = {}
    for kind, created, finished in rows:
        by_kind.setdefault(kind, []).append(_seconds(created, finished))
    family = HistogramMetricFamily(
        "keyturn_operation_duration_seconds",
        "From request to end, by operation kind",
        labels=["kind"],
    )
    for kind, values in sorted(by_kind.items()):
        family.add_metric([kind], *_histogram(values, OPERATION_BUCKETS))
    return family


def _gauges(db: Session) -> Iterable[GaugeMetricFamily]:
    out_of_sync = GaugeMetricFamily(
        "keyturn_credentials_out_of_sync",
        "Credentials whose target may not have the vault's secret",
    )
    out_of_sync.add_metric(
        [],
        db.exec(
            select(func.count())
            .select_from(Credential)
            .where(Credential.sync_state == SyncState.OUT_OF_SYNC)
        ).one(),
    )
    statuses = Counter(
        dict(
            db.exec(
                select(Operation.status, func.count())
                .where(col(Operation.status).in_((OperationStatus.QUEUED, *IN_FLIGHT)))
                .group_by(Operation.status)
            ).all()
        )
    )
    queued = GaugeMetricFamily(
        "keyturn_operations_queued", "Operations waiting behind another on their credential"
    )
    queued.add_metric([], statuses[OperationStatus.QUEUED])
    in_flight = GaugeMetricFamily("keyturn_operations_in_flight", "Operations scheduled or running")
    in_flight.add_metric([], sum(statuses[s] for s in IN_FLIGHT))
    return (out_of_sync, queued, in_flight)


def _seconds(start: datetime, end: datetime | None) -> float:
    assert end is not None
    return max((end - start).total_seconds(), 0.0)


def _histogram(
    values: Sequence[float], bounds: Sequence[float]
) -> tuple[list[tuple[str, float]], float]:
    """Cumulative bucket counts (with +Inf) and the sum, as HistogramMetricFamily takes them."""
    buckets = [(str(bound), float(sum(1 for v in values if v <= bound))) for bound in bounds]
    buckets.append(("+Inf", float(len(values))))
    return buckets, sum(values)

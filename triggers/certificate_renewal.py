"""Certificates are renewed ``renew_before_days`` before they expire, like passwords expire:
a Temporal Schedule (``keyturn-certificate-renewal-<task queue>``) fires a renewal sweep every
``KEYTURN_SWEEP_INTERVAL_SECONDS``; the sweep requests a renewal (trigger
``certificate-renewal``) of each certificate then due. One schedule per deployment: server
state does not grow with certificates. It is made with the first certificate that has a
``renew_before_days``, and at a worker's start when the store holds one.
"""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session, col, select
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
)
from temporalio.service import RPCError

from keyturn.settings import Settings
from requesting import TemporalUnavailable
from store.models import Certificate
from workflows.contracts import (
    CERTIFICATE_RENEWAL_WORKFLOW,
    RenewalSweep,
    certificate_renewal_schedule_id,
)


def renews_any(session: Session) -> bool:
    """Whether any certificate asks to be renewed (else no schedule is needed yet)."""
    query = select(Certificate.id).where(col(Certificate.renew_before_days).is_not(None))
    return session.exec(query.limit(1)).first() is not None


def renewal_schedule(settings: Settings) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            CERTIFICATE_RENEWAL_WORKFLOW,
            RenewalSweep(),
            id=f"keyturn-sweep-certificate-renewal-{settings.task_queue}",
            task_queue=settings.task_queue,
        ),
        spec=ScheduleSpec(
            intervals=[
                ScheduleIntervalSpec(every=timedelta(seconds=settings.sweep_interval_seconds))
            ]
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(note="Keyturn: certificate renewal sweep"),
    )


async def ensure_renewal_schedule(client: Client, settings: Settings) -> bool:
    """Create the renewal schedule unless it exists; True if it was created."""
    try:
        await client.create_schedule(
            certificate_renewal_schedule_id(settings.task_queue), renewal_schedule(settings)
        )
    except ScheduleAlreadyRunningError:
        return False
    except RPCError as exc:
        raise TemporalUnavailable(
            f"Temporal at {client.service_client.config.target_host} did not take the "
            f"certificate renewal schedule: {exc}"
        ) from None
    return True

"""An operation's first step (revision 1 of its workflow): register at the credential's gate
and, if the operation holds the gate, prepare it and claim its first device slot, all in one
transaction of one local activity.

Three steps of their own cost the operation two more local activities (two history events, two
round trips between the workflow and the worker) and two more store transactions; done apart,
they did nothing the one transaction does not. Each part is idempotent, so the step is too:
after a crash the retried step finds the row registered, the pending secret stored and the
claim made, and answers as the first try did.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.device_slots import DeviceSlotActivities
from activities.gate import never_registrable, registration
from activities.slot_grants import tell_granted
from activities.store_steps import StoreActivities
from keyturn import failpoints
from store import device_slots, gate
from store.engine import session_scope
from store.models import DeviceSlotClaim
from workflows import steps
from workflows.contracts import (
    Beginning,
    FailureKind,
    RegisterInput,
    SlotRequest,
    WorkflowRef,
    slot_token,
)
from workflows.steps import implements

_T = TypeVar("_T")


class BeginActivities:
    def __init__(
        self, engine: Engine, client: Client, store: StoreActivities, slots: DeviceSlotActivities
    ) -> None:
        self._engine = engine
        self._client = client
        self._store = store
        self._slots = slots

    @implements(steps.begin)
    async def begin(self, request: RegisterInput) -> Beginning:
        # A cancel does not stop the transaction's thread: the step waits for it and answers
        # what it wrote (the workflow raises the cancel before its first device step), so the
        # workflow never gives back, or finishes, what the thread then writes.
        beginning, handed = await _uncancelable(
            asyncio.ensure_future(asyncio.to_thread(self._begin, request))
        )
        if beginning.plan is not None:
            failpoints.reach(failpoints.AFTER_PREPARE)
        await _uncancelable(
            asyncio.ensure_future(
                tell_granted(self._client, self._engine, beginning.admission.device_id, handed)
            )
        )
        return beginning

    def _begin(self, request: RegisterInput) -> tuple[Beginning, list[DeviceSlotClaim]]:
        with never_registrable():
            try:
                with session_scope(self._engine) as session:
                    admission = gate.admitted(session, registration(request))
                    if admission.queued:
                        return Beginning(admission), []
                    plan = self._store.prepared(session, admission.operation_id)
                    held, handed = device_slots.claim(
                        session,
                        SlotRequest(
                            plan.device_id or admission.device_id,
                            slot_token(admission.operation_id, 1),
                            WorkflowRef(request.workflow_id, request.run_id),
                            plan.device_capacity,
                            admission.order_key,
                        ),
                    )
                    return Beginning(admission, plan, self._slots.answer(held)), handed
            except ApplicationError as exc:
                if exc.type != FailureKind.CONFIGURATION:
                    raise
            # Prepare refused the operation (an inactive credential, say), and the transaction
            # was rolled back: register it alone. The workflow's own prepare step then fails
            # with the reason, the way an operation queued first does.
            return Beginning(gate.admit(self._engine, registration(request))), []


async def _uncancelable(work: asyncio.Future[_T]) -> _T:
    """``work``'s result, even if this step is canceled meanwhile."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        return await work

"""The Keyturn worker: ``python worker.py``.

Polls the main task queue (workflows and store activities) and the task queue of each zone this
worker serves (executor activities), and shuts down gracefully on SIGINT/SIGTERM: running
activities get a grace period to finish before the worker exits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Engine
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.begin import BeginActivities
from activities.callbacks import CallbackActivities
from activities.certificates import CertificateActivities
from activities.child_planning import ChildPlanningActivities
from activities.device_slots import DeviceSlotActivities
from activities.executor_steps import ExecutorActivities
from activities.gate import GateActivities
from activities.legacy.slot_rows import LegacySlotActivities
from activities.store_steps import StoreActivities
from activities.task_steps import TaskExecutorActivities, TaskStoreActivities
from activities.triggers import TriggerActivities
from governance.siem import SiemEcho
from keyturn.logs import configure_logging
from keyturn.settings import Settings
from keyturn.temporal import connect, ensure_search_attributes
from keyturn.zones import zone_task_queue
from requesting.restored import request_verifies_after_restore
from store.engine import STORE_ACTIVITY_THREADS, in_thread, make_engine
from store.seed import seed_shipped_templates
from store.vault import Vault
from triggers import schedules, task_schedules
from triggers.certificate_renewal import ensure_renewal_schedule, renews_any
from workflows.callback import CallbackWorkflow
from workflows.certificate import CertificateRenewalWorkflow, CertificateWorkflow
from workflows.contracts import SEARCH_ATTRIBUTES
from workflows.delayed_operation import DelayedOperationWorkflow
from workflows.device_slots import DeviceSlotsWorkflow
from workflows.operation import OperationWorkflow
from workflows.sweep import SweepWorkflow
from workflows.task_run import TaskRunWorkflow, TaskTargetWorkflow

GRACEFUL_SHUTDOWN = timedelta(seconds=30)
# Activities the main queue's worker runs at once (Temporal's default), executor steps aside.
# Its synchronous (store) activities beyond the pool's threads wait for one, as they do with
# Temporal's default: set explicitly, the SDK warns of it at each start.
MAIN_QUEUE_ACTIVITIES = 100
# The sandbox re-imports a workflow's module for every run it starts: with 1,000 operations in
# flight that was 1,000 copies of workflows/operation.py (about 100 MiB of the worker) and a
# tenth of its CPU per change. Keyturn's own workflow package is imported once instead; it is
# deterministic by construction (tests/workflows/test_determinism.py checks its imports), and
# the sandbox's full checks still run on every recorded history (tests/workflows/test_replay.py).
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("workflows")
)


def build_workers(client: Client, settings: Settings, engine: Engine) -> list[Worker]:
    vault = Vault(settings.keyring)
    store = StoreActivities(engine, vault, settings.step_queues, settings.lost_worker_seconds)
    children = ChildPlanningActivities(engine)
    legacy_slots = LegacySlotActivities(engine)
    gate = GateActivities(engine, client)
    slots = DeviceSlotActivities(
        engine, client, timedelta(seconds=settings.slot_holder_check_seconds)
    )
    begin = BeginActivities(engine, client, store, slots)
    executor = ExecutorActivities(engine, vault, client)
    triggers = TriggerActivities(engine, client, settings.task_queue)
    callbacks = CallbackActivities(engine, settings)
    task_store = TaskStoreActivities(engine, settings.step_queues, settings.lost_worker_seconds)
    task_executor = TaskExecutorActivities(engine, vault)
    certificates = CertificateActivities(engine, vault, settings, client)
    # Store activities are synchronous (SQLModel); they run in this pool, off the event loop.
    # Their count is part of the store's pool sizing (store/engine.py).
    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=STORE_ACTIVITY_THREADS, thread_name_prefix="keyturn-store"
    )
    executor_steps: list[Callable[..., Any]] = [
        executor.change,
        executor.probe,
        task_executor.run_task,
        certificates.cert_publish,
    ]
    # A step beats every 2 s, or every quarter of its heartbeat timeout if shorter
    # (activities/heartbeats.py); the SDK sends a beat on within a third of it.
    heartbeat_throttle = timedelta(seconds=settings.lost_worker_seconds / 3)
    # The main queue serves the executor steps too, whatever the setting: steps planned on it
    # (settings.default_zone_on_main_queue) by a worker with the setting on still run once it
    # is turned off, or on a worker started without it. With the setting, as many at once
    # there as on a zone's queue, besides the store's; otherwise Temporal's default.
    main_queue_activities = (
        MAIN_QUEUE_ACTIVITIES + settings.max_concurrent_executor_calls
        if settings.default_zone_on_main_queue
        else None
    )
    with warnings.catch_warnings():
        # Said once here (MAIN_QUEUE_ACTIVITIES) rather than at every start.
        warnings.filterwarnings("ignore", "Worker max_concurrent_activities", UserWarning)
        main = Worker(
            client,
            task_queue=settings.task_queue,
            workflows=[
                OperationWorkflow,
                DeviceSlotsWorkflow,
                SweepWorkflow,
                DelayedOperationWorkflow,
                CallbackWorkflow,
                TaskRunWorkflow,
                TaskTargetWorkflow,
                CertificateWorkflow,
                CertificateRenewalWorkflow,
            ],
            activities=[
                begin.begin,
                gate.register,
                gate.leave_gate,
                gate.depart,
                gate.check_gate,
                slots.request_device_slot,
                slots.release_device_slot,
                slots.check_device_slots,
                slots.workflows_running,
                store.prepare,
                store.commit,
                store.note_late_cancel,
                store.finish,
                children.plan_children,
                children.child_not_started,
                triggers.due_page,
                triggers.request_due,
                triggers.request_delayed,
                callbacks.close_callbacks,
                triggers.schedule_jit_removal,
                callbacks.deliver_callback,
                task_store.begin_task_run,
                task_store.prepare_task_target,
                task_store.end_task_run,
                certificates.cert_open,
                certificates.cert_finish,
                certificates.cert_request,
                certificates.cert_approved,
                certificates.cert_sign,
                certificates.cert_revoke,
                certificates.cert_publish_plan,
                certificates.cert_renew_due,
                # Only operations started before the gate and device-slot workflows use these.
                legacy_slots.acquire_slot,
                legacy_slots.release_slot,
                *executor_steps,
            ],
            activity_executor=pool,
            max_concurrent_activities=main_queue_activities,
            max_heartbeat_throttle_interval=heartbeat_throttle,
            graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
            workflow_runner=WORKFLOW_RUNNER,
            max_cached_workflows=settings.workflow_cache_size,
            # A workflow's next task goes to the worker that ran its last one, if it answers
            # within this; a lost worker's go to another after it.
            sticky_queue_schedule_to_start_timeout=timedelta(seconds=settings.lost_worker_seconds),
        )
    workers = [main]
    workers += [
        Worker(
            client,
            task_queue=zone_task_queue(settings.task_queue, zone),
            activities=executor_steps,
            max_concurrent_activities=settings.max_concurrent_executor_calls,
            max_heartbeat_throttle_interval=heartbeat_throttle,
            graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
        )
        # The default zone's queue too when its steps are on the main queue: steps planned
        # before (or by a worker without it) are still sent there.
        for zone in settings.zones
    ]
    return workers


async def start_schedules(client: Client, engine: Engine, settings: Settings) -> None:
    """Every policy's schedules as the store says, whatever happened while Keyturn was down."""
    done = await schedules.reconcile(client, engine, settings)
    if await in_thread(engine, renews_any):  # the API makes it with the first such certificate
        await ensure_renewal_schedule(client, settings)
    logging.getLogger("keyturn").info(
        "schedules of %d policies in place; %d orphans removed", done.applied, len(done.removed)
    )
    tasks = await task_schedules.reconcile(client, engine, settings)
    logging.getLogger("keyturn").info(
        "schedules of %d tasks in place; %d orphans removed", tasks.applied, len(tasks.removed)
    )


def build_echo(settings: Settings, engine: Engine) -> SiemEcho | None:
    """The SIEM echo's delivery loops, when destinations are configured."""
    return SiemEcho(engine, settings.siem_destinations) if settings.siem_destinations else None


async def run_workers(
    workers: list[Worker], stop: asyncio.Event, echo: SiemEcho | None = None
) -> None:
    """Run until ``stop`` is set, then shut every worker down gracefully. The SIEM echo runs
    beside them and stops with them."""
    tasks = [asyncio.create_task(w.run()) for w in workers]
    echoing = asyncio.create_task(echo.run(stop)) if echo is not None else None
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    await asyncio.gather(*(w.shutdown() for w in workers))
    if echoing is not None:
        await echoing
    for task in done:
        if task is not stopper:
            task.result()  # a worker that died on its own: surface why
    stopper.cancel()


async def verify_after_restore(engine: Engine, client: Client, task_queue: str) -> None:
    """A verify for each credential ``keyturn restore`` flagged (nothing on other starts)."""
    requested = await request_verifies_after_restore(engine, client, task_queue)
    if requested:
        logging.getLogger("keyturn").info(
            "requested %d verifies of credentials in flight at backup time", len(requested)
        )


async def main(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    engine = make_engine(settings.resolved_database_url)
    seed_shipped_templates(engine)
    client = await connect(settings, worker=True)
    await ensure_search_attributes(client, settings.temporal["namespace"], SEARCH_ATTRIBUTES)
    await start_schedules(client, engine, settings)
    await verify_after_restore(engine, client, settings.task_queue)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    logging.getLogger("keyturn").info(
        "worker serving %s and zones %s", settings.task_queue, ", ".join(settings.zones)
    )
    await run_workers(build_workers(client, settings, engine), stop, build_echo(settings, engine))


if __name__ == "__main__":
    configure_logging()
    asyncio.run(main())

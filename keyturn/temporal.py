"""One way to reach Temporal: the client every process (worker, starter, CLI) uses."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributeKey
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import RPCError, RPCStatusCode

from keyturn.codec import data_converter
from keyturn.settings import Settings
from keyturn.telemetry import client_interceptors


async def connect(settings: Settings, *, worker: bool = False) -> Client:
    """``worker``: this client runs workers, which serve the SDK's Prometheus metrics on
    KEYTURN_WORKER_METRICS_ADDRESS when it is set (one runtime per process)."""
    runtime = sdk_runtime(settings.worker_metrics_address) if worker else None
    return await Client.connect(
        **settings.temporal,
        data_converter=data_converter(settings.keyring),
        runtime=runtime,
        interceptors=client_interceptors(),
    )


@functools.cache
def sdk_runtime(metrics_address: str | None) -> Runtime | None:
    """The Temporal SDK's runtime with its Prometheus endpoint (host:port), made once."""
    if not metrics_address:
        return None
    return Runtime(
        telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=metrics_address))
    )


async def ensure_search_attributes(
    client: Client, namespace: str, keys: Sequence[SearchAttributeKey[str]]
) -> None:
    """Register Keyturn's search attributes on a cluster that lacks them (the dev server gets them
    on its command line). A cluster that forbids it (Temporal Cloud) is told once, in the log."""
    request = AddSearchAttributesRequest(
        namespace=namespace,
        search_attributes={key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for key in keys},
    )
    try:
        await client.operator_service.add_search_attributes(request)
    except RPCError as exc:
        if exc.status != RPCStatusCode.ALREADY_EXISTS:
            logging.getLogger("keyturn").warning(
                "could not register search attributes (%s); register %s as Keyword",
                exc.message,
                ", ".join(k.name for k in keys),
            )


async def workflow_running(client: Client, workflow_id: str, run_id: str | None) -> bool:
    """Whether that workflow run is still running; a run Temporal no longer knows is not."""
    try:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        description = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return description.status == WorkflowExecutionStatus.RUNNING

"""OpenTelemetry traces, exported over OTLP (HTTP) when OTEL_EXPORTER_OTLP_ENDPOINT is set.

Temporal's TracingInterceptor, on every client (and so on the workers built from it), makes a
span for each workflow start and run and for each activity, so an operation is one trace and
each attempt at the target one span in it. The standard OTEL_* variables configure the rest
(OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_HEADERS, …). Spans carry workflow and activity names and
ids, never a payload.
"""

from __future__ import annotations

import functools
import os

from temporalio.client import Interceptor

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"


def client_interceptors() -> list[Interceptor]:
    if not os.environ.get(ENDPOINT):
        return []
    return [_tracing()]


@functools.cache
def _tracing() -> Interceptor:
    """Install the process's tracer provider once, and the interceptor that uses it."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from temporalio.contrib.opentelemetry import TracingInterceptor

    service = os.environ.get("OTEL_SERVICE_NAME", "keyturn")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return TracingInterceptor()

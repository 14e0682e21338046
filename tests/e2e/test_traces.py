"""With OTEL_EXPORTER_OTLP_ENDPOINT set, an operation is exported over OTLP as a trace with a
span per workflow and per attempt; the spans hold no secret."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from temporalio.testing import WorkflowEnvironment

from keyturn.settings import Settings
from keyturn.temporal import connect
from tests.e2e.conftest import Stack, running_stack
from tests.e2e.helpers import credential, current_secret, policy, ssh_device
from tests.e2e.secrets_search import assert_no_secret
from tests.servers.sshd import Sshd, Users

OLD = "Tr4ce!old-secret"


class OtlpReceiver:
    """A real OTLP/HTTP endpoint: keeps every ExportTraceServiceRequest POSTed to /v1/traces."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.path == "/v1/traces":
                    receiver.requests.append(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def spans(self) -> list[tuple[str, dict[str, str]]]:
        found = []
        for raw in list(self.requests):
            request = ExportTraceServiceRequest.FromString(raw)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        attributes = {a.key: a.value.string_value for a in span.attributes}
                        found.append((span.name, attributes))
        return found


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        yield receiver
    # Send what is left while the endpoint still listens; nothing exports after this module.
    provider = trace.get_tracer_provider()
    provider.force_flush()  # type: ignore[attr-defined]
    provider.shutdown()  # type: ignore[attr-defined]
    receiver.server.shutdown()


@pytest.fixture(scope="module")
async def traced(
    temporal: WorkflowEnvironment, otlp: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    settings = Settings(
        temporal_address=temporal.client.service_client.config.target_host,
        master_key=base64.b64encode(temporal.master_key).decode(),  # type: ignore[attr-defined]
    )
    client = await connect(settings)  # what every Keyturn process does: tracing, from the env
    async with running_stack(temporal, tmp_path_factory.mktemp("traces"), client=client) as stack:
        yield stack


async def test_an_operation_is_a_trace(
    traced: Stack, otlp: OtlpReceiver, sshd: Sshd, ssh_users: Users
) -> None:
    stack = traced
    user = ssh_users.create(OLD)
    device = await ssh_device(stack, sshd)
    pol = await policy(stack)
    cred = await credential(stack, device["id"], user, OLD, policy_id=pol["id"])
    operation = await stack.run_operation(cred["id"])
    assert operation["status"] == "succeeded"
    wanted = {
        "StartWorkflow:KeyturnOperation",
        "RunWorkflow:KeyturnOperation",
        "RunActivity:keyturn.begin",  # register, prepare and the device slot, in one step
        "RunActivity:keyturn.change",  # the attempt at the target (it verifies and commits)
    }
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        await asyncio.to_thread(trace.get_tracer_provider().force_flush)  # type: ignore[attr-defined]
        mine = [
            (name, attrs)
            for name, attrs in otlp.spans()
            if attrs.get("temporalWorkflowID") == operation["workflow_id"]
        ]
        if wanted <= {name for name, _ in mine}:
            break
        assert loop.time() < deadline, sorted({name for name, _ in mine})
        await asyncio.sleep(0.1)
    attempts = [name for name, _ in mine if name == "RunActivity:keyturn.change"]
    assert len(attempts) == len([a for a in operation["attempts"] if a["step"] == "change"])
    assert_no_secret(b"".join(otlp.requests), OLD, current_secret(stack, cred["id"]))

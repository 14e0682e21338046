"""The API answers what its OpenAPI document says, for inputs drawn from that document.

Schemathesis generates requests for every route from ``/openapi.json`` (valid and invalid
bodies, ids, queries) and checks three things for each answer: no server error, a status code
the route declares, and a body that matches the declared schema. The API runs as its own
process (``keyturn api``) on the session's Temporal server with a task queue no worker serves:
operations it accepts are started and wait there, so nothing generated reaches any target.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from tests.e2e.conftest import ADMIN_TOKEN
from tests.servers.ports import free_port

CHECKS = ["not_a_server_error", "status_code_conformance", "response_schema_conformance"]


@pytest.fixture(scope="module")
def api_url(
    temporal: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    data_dir: Path = tmp_path_factory.mktemp("conformance")
    port = free_port()
    env = {
        **os.environ,
        "KEYTURN_DATA_DIR": str(data_dir),
        "KEYTURN_DATABASE_URL": f"sqlite:///{data_dir / 'keyturn.db'}",
        "KEYTURN_MASTER_KEY": base64.b64encode(temporal.master_key).decode(),  # type: ignore[attr-defined]
        "KEYTURN_ADMIN_TOKEN": ADMIN_TOKEN,
        "KEYTURN_TEMPORAL_ADDRESS": temporal.client.service_client.config.target_host,
        "KEYTURN_TASK_QUEUE": f"unserved-{secrets.token_hex(4)}",
        "KEYTURN_API_PORT": str(port),
    }
    log = (data_dir / "api.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "starter.cli", "api"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:  # ready when it answers; a process that died says why in its log
        assert process.poll() is None, (data_dir / "api.log").read_text()
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=30)
    log.close()


def test_the_api_answers_what_its_openapi_says(api_url: str, tmp_path: Path) -> None:
    # Schemathesis' command line, not its pytest plugin: the plugin reaches into pytest's
    # private attributes and breaks with new pytest releases.
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")), "run", f"{api_url}/openapi.json",
            "--checks", ",".join(CHECKS), "--header", f"Authorization: Bearer {ADMIN_TOKEN}",
            "--max-examples", "25", "--seed", "1", "--no-color",
            "--generation-database", "none",
        ],
        capture_output=True, text=True, cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]

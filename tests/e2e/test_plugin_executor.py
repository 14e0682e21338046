"""A third-party executor package, installed into this environment, runs an operation.

It registers through the ``keyturn.executors`` entry-point group, exactly as Keyturn's own
executors do, and ships its templates as package data.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from executors.base import registry
from store.seed import seed_shipped_templates
from tests.e2e.conftest import Stack
from tests.e2e.helpers import credential, current_secret

PLUGIN = Path(__file__).parents[1] / "plugins" / "keyturn-file-executor"


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--quiet", *args], check=True)


@pytest.fixture
def file_executor_installed(stack: Stack) -> Iterator[None]:
    _pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(PLUGIN))
    registry.cache_clear()
    seed_shipped_templates(stack.engine)  # what a restart of the worker and API does
    try:
        yield
    finally:
        _pip("uninstall", "--yes", "keyturn-file-executor")
        registry.cache_clear()


async def test_an_out_of_tree_executor_runs_an_operation(
    stack: Stack, file_executor_installed: None, tmp_path: Path
) -> None:
    executors = {e["name"]: e for e in (await stack.api.get("/v1/executors")).json()["items"]}
    assert "ssh" in executors and "file" in executors
    assert executors["file"]["templates"] == ["file/set-password", "file/verify"]
    assert executors["file"]["operation_kinds"] == ["change", "verify"]

    accounts = tmp_path / "accounts.json"
    accounts.write_text(json.dumps({"app": "old-secret", "other": "untouched"}))
    device = await stack.post(
        "/v1/devices",
        {
            "name": "file-target",
            "address": "localhost",
            "executor": "file",
            "options": {"path": str(accounts)},
        },
    )
    assert device["port"] == 1  # the plugin's default port
    cred = await credential(stack, device["id"], "app", "old-secret")
    assert cred["change_template"] == "file/set-password"

    op = await stack.run_operation(cred["id"])

    assert op["status"] == "succeeded", op
    new = current_secret(stack, cred["id"])
    assert json.loads(accounts.read_text()) == {"app": new, "other": "untouched"}

"""Workflow code is deterministic by construction: it imports nothing that reads the clock,
randomness, the environment or the network.

Why a static check: the worker passes the ``workflows`` package through Temporal's sandbox
(worker.py), so a workflow module is imported once, not once per run, and its own calls are not
intercepted there. The sandbox's full checks still run, on every recorded history, in
test_replay.py; this test catches the import that would bring a non-deterministic call in before
any history records it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
# Modules a workflow may import (and their submodules where a prefix ends with a dot).
ALLOWED = {
    "__future__", "asyncio", "builtins", "collections.abc", "contextlib", "dataclasses",
    "datetime", "enum", "typing", "temporalio", "temporalio.", "workflows", "workflows.",
}  # fmt: skip
# Names of datetime that read the clock: workflow.now() is the deterministic one.
CLOCK = {"now", "utcnow", "today", "fromtimestamp", "utcfromtimestamp"}
# Blocking or non-deterministic asyncio calls (asyncio.sleep is a durable timer: allowed).
ASYNCIO_FORBIDDEN = {"to_thread", "get_event_loop", "new_event_loop", "run", "open_connection"}


def _allowed(module: str) -> bool:
    return module in ALLOWED or any(a.endswith(".") and module.startswith(a) for a in ALLOWED)


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            found += [f"line {node.lineno}: imports {m}" for m in modules if not _allowed(m)]
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            owner, name = node.value.id, node.attr
            if (owner in ("datetime", "date") and name in CLOCK) or (
                owner == "asyncio" and name in ASYNCIO_FORBIDDEN
            ):
                found.append(f"line {node.lineno}: {owner}.{name}")
        if isinstance(node, ast.Name) and node.id == "open":
            found.append(f"line {node.lineno}: open")
    return found


@pytest.mark.parametrize(
    "path", sorted(WORKFLOWS.rglob("*.py")), ids=lambda p: str(p.relative_to(WORKFLOWS))
)
def test_a_workflow_module_imports_nothing_non_deterministic(path: Path) -> None:
    assert _problems(path) == []


def test_the_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import time\nfrom datetime import datetime\nimport asyncio\n"
        "x = datetime.now()\nasyncio.to_thread(print)\nopen('f')\n"
    )
    assert _problems(sample) == [
        "line 1: imports time",
        "line 4: datetime.now",
        "line 5: asyncio.to_thread",
        "line 6: open",
    ]

"""A workflow module imports no store, executor or client code: it calls activities through
their declarations (workflows/steps.py) and reads error kinds from the contracts."""

from __future__ import annotations

import ast
from pathlib import Path

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
FORBIDDEN = (
    "store",
    "executors",
    "activities",
    "starter",
    "requesting",
    "governance",
    "keyturn.temporal",
)


def test_workflow_modules_import_only_contracts_and_temporal() -> None:
    for path in WORKFLOWS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(FORBIDDEN), f"{path.name} imports {name}"

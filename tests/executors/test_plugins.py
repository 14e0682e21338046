"""Executors and CA plugins are found by entry point and loaded when first asked for: a
process imports the protocol libraries it uses and no others, and a plugin that cannot load
is logged once and left out without taking the others down."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint

import pytest

from executors import plugins
from executors.base import registry
from executors.plugins import Plugins
from executors.shipped import shipped_templates
from tests.python_process import run_python

GROUP = "keyturn.executors"
DRIVERS = ("psycopg", "pymysql", "winrm", "ldap3")

LOADED = """
import json, sys
from executors.base import get_executor
from executors.shipped import shipped_templates
loaded = lambda: [name for name in sys.argv[1:] if name in sys.modules]
steps = {"start": loaded()}
names = {t.name.partition("/")[0] for t in shipped_templates()}  # what every start seeds
steps["seeded"] = loaded()
get_executor("ssh")
steps["ssh"] = loaded()
get_executor("postgresql")
steps["postgresql"] = loaded()
print(json.dumps({"steps": steps, "executors": sorted(names)}))
"""


def test_a_process_imports_the_protocol_libraries_it_uses_only() -> None:
    found = json.loads(run_python(LOADED, *DRIVERS).stdout)
    assert {"ssh", "postgresql", "mysql", "ldap", "http", "winrm"} <= set(found["executors"])
    # One package, executors.sql, serves PostgreSQL and MySQL: it brings both drivers.
    sql = ["psycopg", "pymysql"]
    assert found["steps"] == {"start": [], "seeded": [], "ssh": [], "postgresql": sql}


def _points(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    points = [EntryPoint(name, value, GROUP) for name, value in values.items()]
    monkeypatch.setattr(plugins, "entry_points", lambda group: points if group == GROUP else [])


def test_a_plugin_that_cannot_load_is_left_out_and_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _points(monkeypatch, ssh="executors.ssh:SshExecutor", broken="keyturn_no_such_plugin:Thing")
    found: Plugins[object] = Plugins(GROUP, "executor")

    assert found.packages() == {"ssh": "executors", "broken": "keyturn_no_such_plugin"}
    assert "broken" not in found
    assert list(found) == ["ssh"] and len(found) == 1
    with pytest.raises(KeyError):
        found["broken"]  # tried again (a failure may pass), logged once
    assert type(found["ssh"]).__name__ == "SshExecutor"
    assert found["ssh"] is found["ssh"]  # instantiated once
    failures = [r for r in caplog.records if "failed to load" in r.getMessage()]
    assert [r.getMessage() for r in failures] == ["executor plugin 'broken' failed to load"]


def test_a_plugin_whose_package_cannot_be_imported_ships_no_templates(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What every start seeds: the other executors' templates, and a line about the broken
    one (it used to stop the worker and the API from starting)."""
    _points(monkeypatch, ssh="executors.ssh:SshExecutor", broken="keyturn_no_such_plugin:Thing")
    registry.cache_clear()
    try:
        names = {template.name for template in shipped_templates()}
    finally:
        registry.cache_clear()
    assert "ssh/linux-passwd" in names
    assert {name.partition("/")[0] for name in names} == {"ssh"}
    assert "executor plugin 'broken': its templates could not be read" in caplog.text

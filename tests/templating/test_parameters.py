"""Task template parameters: declarations read from the header, values checked against them,
and rendered with the escaping of the place they land in."""

from __future__ import annotations

import pytest

from executors.shipped import shipped_templates
from templating import TemplateContext, TemplateSyntaxProblem, escaping, render
from templating.parameters import (
    Parameter,
    ParameterProblem,
    check_references,
    declared,
    resolve,
)

BODY = """# kind: task
# param: service string
# param: idle_minutes int 30
# param: dry_run bool false
# param: mode choice(fast,slow) fast
exec: true
"""


def test_declarations_are_read_with_their_types_and_defaults() -> None:
    assert declared(BODY) == (
        Parameter("service", "string"),
        Parameter("idle_minutes", "int", default=30),
        Parameter("dry_run", "bool", default=False),
        Parameter("mode", "choice", ("fast", "slow"), "fast"),
    )
    assert declared("-- kind: task\n-- param: n int 5\nSELECT 1;\n") == (
        Parameter("n", "int", default=5),
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("# param: service", "declared as"),
        ("# param: Service string", "lowercase"),
        ("# param: n float", "unknown type"),
        ("# param: n int many", "not an integer"),
        ("# param: b bool yes", "not true or false"),
        ("# param: m choice()", "choice"),
        ("# param: m choice(a,a)", "choice"),
        ("# param: m choice(a b)", "unknown type"),
        ("# param: m choice(a,b) c", "must be one of"),
    ],
)
def test_a_declaration_that_cannot_work_names_its_line(line: str, message: str) -> None:
    with pytest.raises(TemplateSyntaxProblem) as problem:
        declared(f"# kind: task\n{line}\nexec: true\n")
    assert problem.value.line == 2 and message in problem.value.message


def test_a_parameter_declared_twice_is_refused() -> None:
    with pytest.raises(TemplateSyntaxProblem, match="twice"):
        declared("# param: a string\n# param: a int\n")


def test_values_are_checked_and_defaults_filled_in() -> None:
    parameters = declared(BODY)
    assert resolve(parameters, {"service": "nginx", "idle_minutes": 5}) == {
        "service": "nginx",
        "idle_minutes": 5,
        "dry_run": False,
        "mode": "fast",
    }
    # A task's own values: only what is given is checked; a run completes them.
    assert resolve(parameters, {"mode": "slow"}, complete=False) == {"mode": "slow"}


@pytest.mark.parametrize(
    ("given", "name", "message"),
    [
        ({"service": "x", "colour": "red"}, "colour", "not a parameter"),
        ({"service": 5}, "service", "expects a string, got the number 5"),
        ({"service": "x", "idle_minutes": "5"}, "idle_minutes", "expects an integer"),
        ({"service": "x", "idle_minutes": True}, "idle_minutes", "expects an integer"),
        ({"service": "x", "idle_minutes": 1.5}, "idle_minutes", "expects an integer"),
        ({"service": "x", "idle_minutes": 2**70}, "idle_minutes", "64-bit"),
        ({"service": "x", "dry_run": "false"}, "dry_run", "expects true or false"),
        ({"service": "x", "mode": "medium"}, "mode", "one of fast, slow"),
        ({"service": None}, "service", "got null"),
        ({"service": "a\x00b"}, "service", "NUL"),
        ({"service": "x" * 1025}, "service", "longer than"),
        ({}, "service", "is required"),
    ],
)
def test_a_value_that_does_not_fit_names_its_parameter(
    given: dict[str, object], name: str, message: str
) -> None:
    with pytest.raises(ParameterProblem) as problem:
        resolve(declared(BODY), given)
    assert problem.value.name == name and message in problem.value.message


def test_a_parameter_is_escaped_for_where_it_lands() -> None:
    context = TemplateContext(
        username="u", current_password="", new_password="", hostname="h", address="a", port=22,
        params={"service": "x'; rm -rf / #", "n": 5},
    )  # fmt: skip
    assert render("{{ params.service }}", context, escape=escaping.shell) == (
        "'x'\"'\"'; rm -rf / #'"
    )
    assert render("{{ params.service }}", context, escape=escaping.sql_literal) == (
        "'x''; rm -rf / #'"
    )
    assert render("{{ params.n }}", context, escape=escaping.sql_literal) == "'5'"


def test_every_shipped_task_template_declares_its_parameters_soundly() -> None:
    tasks = {t.name: declared(t.body) for t in shipped_templates() if t.kind == "task"}
    for template in shipped_templates():
        if template.kind == "task":
            check_references(template.body, tasks[template.name])  # reads only what it declares
    assert set(tasks) >= {
        "ssh/uptime",
        "ssh/service-restart",
        "ssh/list-logged-in-users",
        "postgresql/terminate-idle-sessions",
        "ldap/list-locked-accounts",
    }
    assert tasks["ssh/service-restart"] == (Parameter("service", "string"),)
    assert tasks["postgresql/terminate-idle-sessions"] == (
        Parameter("idle_minutes", "int", default=60),
    )
    assert tasks["ssh/uptime"] == ()


def test_a_parameter_read_but_not_declared_is_refused_with_its_line() -> None:
    body = (
        "# kind: task\n# param: word string\n"
        "exec: echo {{ params.word }}\nexec: echo {{ params.wrod }}\n"
    )
    with pytest.raises(TemplateSyntaxProblem) as problem:
        check_references(body, declared(body))
    assert problem.value.line == 4 and "params.wrod is not declared" in problem.value.message
    by_item = "# kind: task\nexec: echo {{ params['n'] }}\n"
    with pytest.raises(TemplateSyntaxProblem):
        check_references(by_item, declared(by_item))
    check_references(body.replace("wrod", "word"), declared(body))  # every one declared

"""An escaped value remembers its context: a filter that escapes for another context than the
place it is used in is refused when the template is saved (with its line), and at render."""

from __future__ import annotations

import pytest

from executors.base import get_executor
from templating import TemplateContext, TemplateSyntaxProblem, check_syntax, escaping, render

CONTEXT = TemplateContext("app", "old'pw", "new'pw", "host", "127.0.0.1", 22)


@pytest.mark.parametrize(
    ("executor", "template", "line", "names"),
    [
        # An SQL literal inside PowerShell: the issue's own example.
        ("winrm", "$u = 'x'\nSet-Pw {{ new_password | sql_literal }}\n", 2, "sql_literal"),
        # MySQL escapes backslashes; PostgreSQL's literal would end early there.
        ("mysql", "SET PASSWORD = {{ new_password | sql_literal }};\n", 1, "sql_literal"),
        (
            "postgresql",
            "SELECT 1;\nALTER ROLE x PASSWORD {{ new_password | mysql_literal }};",
            2,
            "",
        ),
        ("postgresql", "SELECT {{ username }};\n-- expect: {{ username | sql_ident }}\n", 2, ""),
        ("ssh", "exec: true\nexec: echo {{ new_password | json }}\nexit: 0\n", 2, "json"),
        ("ssh", "exec: id -un\nexpect: {{ username | shell }}\nexit: 0\n", 2, "shell"),
        ("http", "request: PUT /api/users/{{ username | json }}\nexpect: 204\n", 1, "json"),
        (
            "http",
            'request: PUT /api/users/x\nbody: {"password": {{ new_password | sql_literal }}}\n',
            2,
            "",
        ),
    ],
)
def test_a_filter_of_another_context_is_refused_when_saved(
    executor: str, template: str, line: int, names: str
) -> None:
    with pytest.raises(TemplateSyntaxProblem) as refused:
        get_executor(executor).validate(template)
    assert refused.value.line == line
    assert "escapes for" in refused.value.message and names in refused.value.message


@pytest.mark.parametrize(
    ("executor", "template"),
    [
        ("postgresql", "ALTER ROLE {{ username | sql_ident }} PASSWORD {{ new_password }};"),
        ("postgresql", "SELECT 1;\n-- expect: {{ username | regex }}"),
        ("mysql", "SET PASSWORD = {{ new_password | mysql_literal }};"),
        ("ssh", "exec: printf %s {{ new_password | shell }}\nexpect: {{ username | regex }}"),
        ("ssh", "exec: passwd\nsend: {{ new_password | json }}\nexit: 0"),  # send: takes any
        ("winrm", "Set-Pw {{ new_password | powershell }}"),
    ],
)
def test_a_filter_of_the_same_context_is_accepted(executor: str, template: str) -> None:
    get_executor(executor).validate(template)


def test_check_syntax_names_the_line_within_the_template() -> None:
    with pytest.raises(TemplateSyntaxProblem) as refused:
        check_syntax("a\n{{ x | ldap_dn }}", first_line=10, context="ldap_filter")
    assert refused.value.line == 11
    assert "use ldap_filter, or no filter" in refused.value.message


def test_a_value_escaped_for_another_context_is_refused_at_render() -> None:
    # Whatever got past the save-time check (an old template): the renderer refuses it too.
    with pytest.raises(TemplateSyntaxProblem, match="escaped for sql_literal") as refused:
        render(
            "Set-Pw {{ new_password | sql_literal }}", CONTEXT, line=4, escape=escaping.powershell
        )
    assert refused.value.line == 4
    # Escaping twice does not change the first context: the outer filter refuses it.
    with pytest.raises(TemplateSyntaxProblem, match="sql_literal"):
        render("{{ new_password | sql_literal | json }}", CONTEXT)
    assert render("{{ new_password }}", CONTEXT, escape=escaping.powershell) == "'new''pw'"
    assert escaping.sql_literal("it's").context == "sql_literal"

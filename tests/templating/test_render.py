"""Sandboxed rendering, Segura-style tags, shell escaping, line numbers in errors."""

from __future__ import annotations

import shlex
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from templating import TemplateContext, TemplateSyntaxProblem, check_syntax, render

CONTEXT = TemplateContext(
    username="app",
    current_password="old",
    new_password="n3w'$;#\\ x",
    hostname="web-1",
    address="10.0.0.5",
    port=22,
    auth_username="root",
    auth_password="adm",
)


def test_jinja_and_segura_tags_render_the_same() -> None:
    jinja = render("{{ username }}:{{ new_password }}@{{ hostname }}/{{ address }}", CONTEXT)
    segura = render("[#USERNAME#]:[#NEW_PASSWORD#]@[#HOSTNAME#]/[#IP#]", CONTEXT)
    assert jinja == segura == "app:n3w'$;#\\ x@web-1/10.0.0.5"
    assert render("[#AUTH_USER#] [#AUTH_PASSWORD#] [#CURRENT_PASSWORD#]", CONTEXT) == "root adm old"


@settings(max_examples=100, deadline=None)  # runs sh per example: no deadline on a busy machine
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40))
def test_shell_filter_makes_one_literal_word(value: str) -> None:
    context = TemplateContext("u", "c", value, "h", "127.0.0.1", 22)
    line = render("printf %s {{ new_password | shell }}", context)
    assert shlex.split(line)[2:] == [value]
    out = subprocess.run(["sh", "-c", line], capture_output=True, check=True).stdout.decode()
    assert out == value


def test_undefined_names_and_syntax_errors_name_the_line() -> None:
    with pytest.raises(TemplateSyntaxProblem) as undefined:
        render("{{ new_pasword }}", CONTEXT, line=7)
    assert undefined.value.line == 7 and "new_pasword" in str(undefined.value)
    with pytest.raises(TemplateSyntaxProblem) as broken:
        check_syntax("ok\nstill ok\n{{ oops }", first_line=1)
    assert broken.value.line == 3


def test_the_sandbox_refuses_python_internals() -> None:
    with pytest.raises(TemplateSyntaxProblem):
        render("{{ username.__class__.__mro__[1].__subclasses__() }}", CONTEXT)


def test_secrets_stay_out_of_repr() -> None:
    assert "n3w" not in repr(CONTEXT) and "adm" not in repr(CONTEXT)

"""The ssh executor's template language: one ``directive: argument`` per line.

Parsing happens on the template source, before any tag is rendered, and each argument is rendered
on its own afterwards. So a secret can contain ``:``, ``#``, newlines or anything else and still
never change the structure of the script.

Each tag is escaped for where it lands (ESCAPES): a shell word in an exec:/spawn: command line, a
literal in an expect:/fail:/authfail: pattern; send: lines go to the program as they are.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from executors.common import directive_lines
from templating import TemplateSyntaxProblem, check_syntax, escaping
from templating.escaping import Escape

PROCESS_DIRECTIVES = frozenset({"exec", "spawn"})
PATTERN_DIRECTIVES = frozenset({"expect", "fail", "authfail"})
DIRECTIVES = PROCESS_DIRECTIVES | PATTERN_DIRECTIVES | {"timeout", "send", "eof", "exit"}
NO_ARGUMENT = frozenset({"eof"})

SYNTAX = (
    "one 'directive: argument' per line: exec:/spawn: (with a PTY) start a command, "
    "expect: regex, fail:/authfail: regex, send: text, eof:, exit: status, timeout: seconds; "
    "# comments; tags like {{ new_password }} or [#NEW_PASSWORD#] in arguments"
)

_TAG_MARKERS = ("{{", "{%", "{#", "[#")
# The escape of each directive's tags; a directive not listed passes values as they are.
ESCAPES: dict[str, Escape] = {
    **dict.fromkeys(PROCESS_DIRECTIVES, escaping.shell),
    **dict.fromkeys(PATTERN_DIRECTIVES, escaping.regex),
}


def escape_for(directive: str) -> Escape | None:
    return ESCAPES.get(directive)


@dataclass(frozen=True)
class Step:
    line: int  # 1-based line in the template source, for error messages
    directive: str
    argument: str  # template source: rendered only when the step runs

    @property
    def label(self) -> str:
        return f"line {self.line} ({self.directive})"


def has_tags(argument: str) -> bool:
    """Is the argument only known at run time (so it can't be checked as a regex or number now)?"""
    return any(marker in argument for marker in _TAG_MARKERS)


def parse_script(text: str) -> list[Step]:
    """Split a template into steps; blank and ``#`` lines are skipped. Pure, no rendering."""
    steps: list[Step] = []
    for number, directive, argument in directive_lines(text, DIRECTIVES):
        if directive in NO_ARGUMENT:
            if argument.strip():
                raise TemplateSyntaxProblem(f"{directive}: takes no argument", number)
            argument = ""
        elif not argument.strip():
            raise TemplateSyntaxProblem(f"{directive}: needs an argument", number)
        steps.append(Step(number, directive, argument))
    return steps


def validate_script(text: str) -> list[Step]:
    """Parse and check everything that can be checked before the tags are known."""
    steps = parse_script(text)
    started = running = False
    for step in steps:
        if step.directive in PROCESS_DIRECTIVES:
            started = running = True
        elif step.directive != "timeout" and not running:
            where = "after exit:" if started else "before any exec: or spawn:"
            raise TemplateSyntaxProblem(
                f"{step.directive}: comes {where}, when no command is running", step.line
            )
        if step.directive == "exit":
            running = False
        if has_tags(step.argument):
            context = escaping.context_of(escape_for(step.directive))
            check_syntax(step.argument, first_line=step.line, context=context)
            continue
        if step.directive in PATTERN_DIRECTIVES:
            compile_pattern(step.argument, step.line)
        elif step.directive == "timeout":
            parse_timeout(step.argument, step.line)
        elif step.directive == "exit":
            parse_exit_status(step.argument, step.line)
    if not started:
        raise TemplateSyntaxProblem("the template runs nothing: add an exec: or spawn: line", None)
    return steps


def compile_pattern(pattern: str, line: int) -> re.Pattern[str]:
    # No implicit flags: a pattern that wants ^/$ per line says (?m) itself.
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise TemplateSyntaxProblem(f"invalid regular expression: {exc}", line) from None


def parse_timeout(value: str, line: int) -> float:
    try:
        seconds = float(value.strip())
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise TemplateSyntaxProblem(
            f"timeout: expects a positive number of seconds, got {value.strip()!r}", line
        )
    return seconds


def parse_exit_status(value: str, line: int) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise TemplateSyntaxProblem(
            f"exit: expects an integer exit status, got {value.strip()!r}", line
        ) from None

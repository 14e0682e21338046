"""Parameters of task templates: declared in the template's header, checked before anything runs.

A task template declares each parameter on a header comment line of its own::

    # param: service string               required: no default
    # param: idle_minutes int 30           an integer, 30 when not given
    # param: dry_run bool false            true or false
    # param: mode choice(fast,slow) fast   one of the listed words

(``-- param:`` in SQL templates.) A parameter without a default is required. Values come from
JSON: an ``int`` must be a JSON integer, a ``bool`` a JSON boolean, a ``string`` or ``choice``
a JSON string. Templates read them as ``{{ params.<name> }}``, escaped for where they land like
every other tag; a value never changes the template's structure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import jinja2
from jinja2 import nodes

from templating.render import TemplateSyntaxProblem

TYPES = ("string", "int", "bool", "choice")
MAX_STRING = 1024  # characters of a string parameter: a task parameter is a word, not a file
_LINE = re.compile(r"^(?:#|--)\s*param:\s*(?P<rest>.*?)\s*$")
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_CHOICE = re.compile(r"^choice\((?P<values>[^()\s]*)\)$")
_WORD = re.compile(r"^[A-Za-z0-9_.:@/+-]+$")
_INT_BOUND = 2**63  # what every target's integer type holds


class ParameterProblem(ValueError):
    """A parameter value that does not fit its declaration; ``name`` is the parameter."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        self.message = message
        super().__init__(f"parameter {name!r}: {message}")


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str  # one of TYPES
    choices: tuple[str, ...] = ()  # choice: the allowed values
    default: str | int | bool | None = None  # None: required

    @property
    def required(self) -> bool:
        return self.default is None

    def describe(self) -> str:
        kind = f"choice({','.join(self.choices)})" if self.type == "choice" else self.type
        return kind if self.required else f"{kind}, default {self.default!r}"

    def check(self, value: object) -> str | int | bool:
        """The value, if it fits; ParameterProblem naming this parameter if not."""
        if self.type == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ParameterProblem(self.name, f"expects an integer, got {_shown(value)}")
            if not -_INT_BOUND <= value < _INT_BOUND:
                raise ParameterProblem(self.name, "is out of the 64-bit integer range")
            return value
        if self.type == "bool":
            if not isinstance(value, bool):
                raise ParameterProblem(self.name, f"expects true or false, got {_shown(value)}")
            return value
        if not isinstance(value, str):
            raise ParameterProblem(self.name, f"expects a string, got {_shown(value)}")
        if self.type == "choice" and value not in self.choices:
            raise ParameterProblem(
                self.name, f"must be one of {', '.join(self.choices)}, not {value!r}"
            )
        if len(value) > MAX_STRING:
            raise ParameterProblem(self.name, f"is longer than {MAX_STRING} characters")
        if "\x00" in value:
            raise ParameterProblem(self.name, "contains a NUL character")
        return value


def declared(body: str) -> tuple[Parameter, ...]:
    """The parameters a template declares, in order. TemplateSyntaxProblem (with its line) for
    a declaration that cannot be used."""
    found: dict[str, Parameter] = {}
    for number, line in enumerate(body.splitlines(), start=1):
        match = _LINE.match(line.strip())
        if match is None:
            continue
        parameter = _parse(match.group("rest"), number)
        if parameter.name in found:
            raise TemplateSyntaxProblem(f"parameter {parameter.name!r} is declared twice", number)
        found[parameter.name] = parameter
    return tuple(found.values())


def check_references(body: str, parameters: tuple[Parameter, ...]) -> None:
    """TemplateSyntaxProblem (with its line) for a ``params.<name>`` the template reads but does
    not declare: found when the template is saved, not by a run half-way through its commands.
    A text Jinja cannot read as a whole is left to the executor's own checks."""
    names = {parameter.name for parameter in parameters}
    try:
        tree = jinja2.Environment().parse(body)
    except jinja2.TemplateSyntaxError:
        return
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        name: object = None
        if isinstance(node, nodes.Getattr):
            target, name = node.node, node.attr
        elif isinstance(node, nodes.Getitem):
            target = node.node
            if isinstance(node.arg, nodes.Const):
                name = node.arg.value
        if name is None or not (isinstance(target, nodes.Name) and target.name == "params"):
            continue  # not a parameter, or a name computed at render time (checked then)
        if name not in names:
            known = ", ".join(sorted(names)) or "none"
            raise TemplateSyntaxProblem(
                f"params.{name} is not declared (a '# param: {name} <type>' line); "
                f"declared: {known}",
                node.lineno,
            )


def _parse(text: str, line: int) -> Parameter:
    parts = text.split(maxsplit=2)
    if len(parts) < 2:
        raise TemplateSyntaxProblem(
            "a parameter is declared as 'param: <name> <type> [default]', type one of "
            "string, int, bool, choice(a,b,…)",
            line,
        )
    name, kind = parts[0], parts[1]
    default_text = parts[2] if len(parts) == 3 else None
    if not _NAME.match(name):
        raise TemplateSyntaxProblem(
            f"parameter name {name!r}: use lowercase letters, digits and _ (a letter or _ first)",
            line,
        )
    choices: tuple[str, ...] = ()
    choice = _CHOICE.match(kind)
    if choice is not None:
        choices = tuple(v for v in choice.group("values").split(",") if v)
        bad = [v for v in choices if not _WORD.match(v)]
        if not choices or bad or len(set(choices)) != len(choices):
            raise TemplateSyntaxProblem(
                f"parameter {name!r}: choice(…) lists distinct words, comma-separated, no spaces",
                line,
            )
        kind = "choice"
    elif kind not in TYPES:
        raise TemplateSyntaxProblem(
            f"parameter {name!r}: unknown type {kind!r} (string, int, bool, choice(a,b,…))", line
        )
    parameter = Parameter(name, kind, choices)
    if default_text is None:
        return parameter
    try:
        default = parameter.check(_default_value(kind, default_text))
    except (ParameterProblem, ValueError) as exc:
        message = exc.message if isinstance(exc, ParameterProblem) else str(exc)
        raise TemplateSyntaxProblem(f"parameter {name!r}: default {message}", line) from None
    return Parameter(name, kind, choices, default)


def _default_value(kind: str, text: str) -> object:
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
    if kind == "bool":
        if text not in ("true", "false"):
            raise ValueError(f"{text!r} is not true or false")
        return text == "true"
    return text


def resolve(
    parameters: tuple[Parameter, ...], given: dict[str, object], *, complete: bool = True
) -> dict[str, str | int | bool]:
    """The values a run uses: each given value checked against its declaration, defaults
    filled in. ``complete``: every required parameter must have a value (a run); otherwise
    only what is given is checked (a task's stored values, completed by each run).
    ParameterProblem names the first parameter at fault."""
    by_name = {p.name: p for p in parameters}
    for name in given:
        if name not in by_name:
            known = ", ".join(by_name) or "none"
            raise ParameterProblem(name, f"is not a parameter of this template (it takes {known})")
    values: dict[str, str | int | bool] = {}
    for parameter in parameters:
        if parameter.name in given:
            values[parameter.name] = parameter.check(given[parameter.name])
        elif not complete:
            continue
        elif parameter.default is not None:
            values[parameter.name] = parameter.default
        else:
            raise ParameterProblem(parameter.name, f"is required ({parameter.describe()})")
    return values


def _shown(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return f"a JSON {'array' if isinstance(value, list) else 'object'}"

"""The http executor's template language: requests in order, one ``directive: argument`` a line.

Parsing happens on the template source, before any tag is rendered; each field is rendered on its
own afterwards, with the escape of the place it lands in (a URL path segment, a JSON value, a
header value). So a password can contain ``"``, ``/``, newlines or ``{{`` and never change the
structure of a request, let alone of the sequence.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from executors.common import directive_lines
from templating import TemplateContext, TemplateSyntaxProblem, check_syntax, render
from templating.escaping import escapes_for, json_value

SYNTAX = (
    "requests in order, one 'directive: argument' a line: request: METHOD /path starts one, then "
    "header: Name: value, body: JSON (tags become JSON strings; repeat to continue), form: "
    "name=value, expect: statuses (default 2xx), capture: name = $.json.path (later as "
    "{{ values.name }}), check: $.path == text, denied: regex (a 401/403 body meaning 'no "
    "privilege', not 'wrong secret'), auth: account|none; tags in the path are percent-encoded; "
    "# comments"
)

FIELD_DIRECTIVES = frozenset(
    {"header", "body", "form", "expect", "capture", "check", "denied", "auth"}
)
DIRECTIVES = FIELD_DIRECTIVES | {"request"}
# Arguments checked when parsing, so tags there would only defeat the check.
_NO_TAGS = frozenset({"expect", "capture", "denied", "auth"})
AUTH_MODES = ("account", "none")

_TAG_MARKERS = ("{{", "{%", "{#", "[#")
_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}")
_METHOD = re.compile(r"^[A-Z]+$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 token
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PATH_TOKEN = re.compile(r"\.([A-Za-z0-9_][A-Za-z0-9_-]*)|\[(\d+)\]")
_FORBIDDEN_HEADERS = frozenset({"authorization", "host", "content-length", "transfer-encoding"})


class JsonText(str):
    """A captured non-string JSON value (a list of tags, a number), kept as its JSON text so it
    lands in a JSON body with its type. Produced only by json.dumps of a parsed response."""


@dataclass(frozen=True)
class Source:
    line: int  # 1-based line in the template, for error messages
    text: str  # template source: rendered only when the request runs


@dataclass(frozen=True)
class Capture:
    line: int
    name: str
    path: tuple[str | int, ...]
    path_text: str


@dataclass(frozen=True)
class Check:
    line: int
    path: tuple[str | int, ...]
    path_text: str
    expected: Source


@dataclass
class Request:
    line: int
    method: str
    path: Source
    headers: list[tuple[str, Source]] = field(default_factory=list)
    body: list[Source] = field(default_factory=list)  # JSON text, one source line each
    form: list[tuple[str, Source]] = field(default_factory=list)
    expect: tuple[int, ...] = ()  # empty: any 2xx
    captures: list[Capture] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    denied: list[re.Pattern[str]] = field(default_factory=list)
    auth: str = "account"

    @property
    def label(self) -> str:
        return f"line {self.line} ({self.method} request)"

    def accepts(self, status: int) -> bool:
        return status in self.expect if self.expect else 200 <= status < 300


# -- escapes: one per place a tag can land ------------------------------------------------------


@escapes_for("url")
def url_segment(value: object) -> str:
    """Percent-encode everything but unreserved characters: a '/', '%', '?' or '#' in a value
    stays inside its path segment (or query value)."""
    return quote(str(value), safe="")


@escapes_for("json")
def json_field(value: object) -> str:
    """A JSON string, except a captured JSON value, which keeps its own (already valid) JSON."""
    if isinstance(value, JsonText):
        return str(value)
    return json_value(value)


def header_value(value: object) -> str:
    text = str(value)
    if any(c in text for c in "\r\n\x00"):
        raise ValueError("a header value cannot contain a line break or NUL")
    return text


def plain(value: object) -> str:
    """Form fields and check: values: httpx encodes form fields itself; checks are not sent."""
    return str(value)


# -- parsing ------------------------------------------------------------------------------------


def has_tags(text: str) -> bool:
    return any(marker in text for marker in _TAG_MARKERS)


def parse_json_path(text: str, line: int) -> tuple[str | int, ...]:
    """``$.user.tags[0]``, ``user.tags.0`` or ``$`` (the whole document)."""
    rest = text.strip()
    rest = rest[1:] if rest.startswith("$") else rest
    if rest and not rest.startswith((".", "[")):
        rest = "." + rest
    tokens: list[str | int] = []
    position = 0
    while position < len(rest):
        match = _PATH_TOKEN.match(rest, position)
        if match is None:
            raise TemplateSyntaxProblem(
                f"invalid JSON path {text.strip()!r} (use $.name.other[0] or name.other.0)", line
            )
        name, index = match.groups()
        tokens.append(int(name) if name is not None and name.isdigit() else name or int(index))
        position = match.end()
    return tuple(tokens)


def find_json(document: Any, path: tuple[str | int, ...]) -> tuple[bool, Any]:
    """(found, value) at ``path``; a number also indexes a list."""
    value = document
    for token in path:
        if isinstance(token, int) and isinstance(value, list) and -len(value) <= token < len(value):
            value = value[token]
        elif isinstance(value, dict) and str(token) in value:
            value = value[str(token)]
        else:
            return False, None
    return True, value


def as_value(found: Any) -> str:
    """A JSON value as a template value: strings as themselves, anything else as JSON text."""
    if isinstance(found, str):
        return found
    return JsonText(json.dumps(found, ensure_ascii=False))


def parse_script(text: str) -> list[Request]:
    """Split a template into requests; blank and ``#`` lines are skipped. Pure, no rendering."""
    requests: list[Request] = []
    for number, directive, argument in directive_lines(text, DIRECTIVES):
        if not argument.strip():
            raise TemplateSyntaxProblem(f"{directive}: needs an argument", number)
        if directive == "request":
            requests.append(_parse_request_line(argument, number))
            continue
        if not requests:
            raise TemplateSyntaxProblem(f"{directive}: comes before any request:", number)
        _add_field(requests[-1], directive, argument, number)
    if not requests:
        raise TemplateSyntaxProblem("the template sends nothing: add a request: line", None)
    return requests


def _parse_request_line(argument: str, line: int) -> Request:
    method, _, path = argument.strip().partition(" ")
    path = path.strip()
    if not _METHOD.match(method):
        raise TemplateSyntaxProblem(
            f"request: expects 'METHOD /path' with an upper-case method, got {argument.strip()!r}",
            line,
        )
    if not path.startswith("/") or any(c.isspace() for c in _TAG.sub("", path)):
        # Only paths under the device's base_url: a template cannot send the account's
        # credentials to another host.
        raise TemplateSyntaxProblem(
            f"request: the path must start with '/' (it is joined to the device's base_url) and "
            f"contain no spaces, got {path!r}",
            line,
        )
    return Request(line=line, method=method, path=Source(line, path))


def _add_field(request: Request, directive: str, argument: str, line: int) -> None:
    if directive in _NO_TAGS and has_tags(argument):
        raise TemplateSyntaxProblem(f"{directive}: cannot contain tags", line)
    match directive:
        case "header":
            name, colon, value = argument.partition(":")
            name = name.strip()
            if not colon or not _HEADER_NAME.match(name) or not value.strip():
                raise TemplateSyntaxProblem("header: expects 'Name: value'", line)
            if name.lower() in _FORBIDDEN_HEADERS:
                raise TemplateSyntaxProblem(
                    f"header: {name} is set by the executor (auth comes from the device's options)",
                    line,
                )
            request.headers.append((name, Source(line, value.strip())))
        case "body":
            request.body.append(Source(line, argument))
        case "form":
            name, equals, value = argument.partition("=")
            if not equals or not name.strip():
                raise TemplateSyntaxProblem("form: expects 'name=value'", line)
            request.form.append((name.strip(), Source(line, value)))
        case "expect":
            request.expect = request.expect + _parse_statuses(argument, line)
        case "capture":
            name, equals, path = argument.partition("=")
            if not equals or not _NAME.match(name.strip()):
                raise TemplateSyntaxProblem("capture: expects 'name = $.json.path'", line)
            request.captures.append(
                Capture(line, name.strip(), parse_json_path(path, line), path.strip())
            )
        case "check":
            path, equals, expected = argument.partition("==")
            if not equals or not expected.strip():
                raise TemplateSyntaxProblem("check: expects '$.json.path == value'", line)
            request.checks.append(
                Check(
                    line, parse_json_path(path, line), path.strip(), Source(line, expected.strip())
                )
            )
        case "denied":
            try:
                request.denied.append(re.compile(argument.strip()))
            except re.error as exc:
                raise TemplateSyntaxProblem(f"invalid regular expression: {exc}", line) from None
        case "auth":
            if argument.strip() not in AUTH_MODES:
                raise TemplateSyntaxProblem(
                    f"auth: expects one of {', '.join(AUTH_MODES)}, got {argument.strip()!r}", line
                )
            request.auth = argument.strip()


def _parse_statuses(argument: str, line: int) -> tuple[int, ...]:
    statuses = []
    for word in argument.replace(",", " ").split():
        if not (word.isdigit() and 100 <= int(word) <= 599):
            raise TemplateSyntaxProblem(f"expect: {word!r} is not an HTTP status (100-599)", line)
        statuses.append(int(word))
    return tuple(statuses)


class _AnyValues(dict[str, str]):
    """For validation: every capture name exists (its real value is only known at run time)."""

    def __missing__(self, key: str) -> str:
        return "x"


_SAMPLE = TemplateContext(
    username="user",
    current_password="current",
    new_password="new",
    hostname="host",
    address="127.0.0.1",
    port=1,
    auth_username="admin",
    auth_password="admin",
    values=_AnyValues(),
)


def validate_script(text: str) -> list[Request]:
    """Parse, then check what can be checked before the tags are known: every field's tag
    syntax, and that each JSON body is JSON once its tags are filled in."""
    requests = parse_script(text)
    for request in requests:
        # Each field with the context its tags are escaped for (None: passed as they are).
        sources: list[tuple[Source, str | None]] = [(request.path, "url")]
        sources += [(source, None) for _, source in request.headers]
        sources += [(source, "json") for source in request.body]
        sources += [(source, None) for _, source in request.form]
        sources += [(check.expected, None) for check in request.checks]
        for source, context in sources:
            if has_tags(source.text):
                check_syntax(source.text, first_line=source.line, context=context)
        if request.body and request.form:
            raise TemplateSyntaxProblem(
                "a request has either body: or form: lines, not both", request.body[0].line
            )
        if request.body:
            _check_json_body(request.body)
    return requests


def render_body(lines: list[Source], context: TemplateContext) -> str:
    return "\n".join(
        render(source.text, context, source.line, escape=json_field) for source in lines
    )


def _check_json_body(lines: list[Source]) -> None:
    try:
        body = render_body(lines, _SAMPLE)
    except TemplateSyntaxProblem:
        return  # a tag the sample context cannot fill (a filter on a value, say): checked at run
    try:
        json.loads(body)
    except json.JSONDecodeError as exc:
        line = lines[0].line + exc.lineno - 1
        raise TemplateSyntaxProblem(
            f"body: is not JSON once its tags are filled in ({exc.msg}); write tags bare, e.g. "
            '{"password": {{ new_password }}}: they become JSON strings',
            line,
        ) from None

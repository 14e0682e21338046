"""The ldap executor's template language: one operation per line, its fields indented below it.

    passwd_modify: {{ user_dn }}          # RFC 3062; no argument = the identity we bound as
      old: {{ current_password }}         # optional (an admin reset sends none)
      new: {{ new_password }}
    modify: {{ user_dn }}
      replace unicodePwd as unicodepwd: {{ new_password }}
    search: {{ base_dn }}
      filter: (uid={{ username }})        # tags escaped for a filter automatically
      scope: sub                          # base (default) | one | sub
      expect: 1                           # entries expected (default: at least one)
    compare: {{ user_dn }}
      attribute: uid
      value: {{ username }}
    whoami: {{ user_dn }}                 # RFC 4532; the argument, if any, must match

Parsing happens on the template source, before any tag is rendered, and each argument is rendered
on its own afterwards, so a secret can contain ``:``, newlines or parentheses and still never
change the structure. Every argument has a *role* that decides its escaping: a DN escapes tags as
RDN values, a filter as assertion values, a value (a password) is sent as an attribute value and
needs none. Secrets are refused in DNs, filters and words: they would travel in clear in places
servers log.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from templating import TemplateContext, TemplateSyntaxProblem, check_syntax, escaping


class Role(Enum):
    DN = "dn"
    FILTER = "filter"
    WORD = "word"  # scope, counts, attribute names: never a secret
    VALUE = "value"  # an attribute value or password: sent as is, may be a secret


OPERATIONS = ("passwd_modify", "modify", "search", "compare", "whoami")
MODIFY_ACTIONS = ("replace", "add", "delete")
ENCODINGS = ("unicodepwd",)  # Active Directory's unicodePwd: '"password"' in UTF-16-LE
SCOPES = ("base", "one", "sub")

# Per operation: is its argument (a DN) required, and its fields with their roles.
_ARGUMENT_REQUIRED = {
    "passwd_modify": False,
    "modify": True,
    "search": True,
    "compare": True,
    "whoami": False,
}
_FIELDS: dict[str, dict[str, Role]] = {
    "passwd_modify": {"old": Role.VALUE, "new": Role.VALUE},
    "modify": {},  # "<action> <attribute> [as <encoding>]" fields, see _modify_field
    "search": {"filter": Role.FILTER, "scope": Role.WORD, "expect": Role.WORD},
    "compare": {"attribute": Role.WORD, "value": Role.VALUE},
    "whoami": {},
}
_REQUIRED_FIELDS = {"passwd_modify": ("new",), "compare": ("attribute", "value")}

SYNTAX = (
    "one operation per line, its fields indented below: passwd_modify: [dn] (old:, new:), "
    "modify: dn (replace|add|delete <attribute> [as unicodepwd]: value), search: base "
    "(filter:, scope: base|one|sub, expect: count), compare: dn (attribute:, value:), "
    "whoami: [expected dn]; # comments; tags like {{ new_password }}, {{ user_dn }}, "
    "{{ base_dn }} escaped for their place (DN, filter or value)"
)

_TAG_MARKERS = ("{{", "{%", "{#", "[#")
_SECRET_NAMES = re.compile(
    r"current_password|new_password|auth_password|CURRENT_PASSWORD|NEW_PASSWORD|AUTH_PASSWORD"
)
_ATTRIBUTE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)$")
_MODIFY_FIELD = re.compile(r"^(?P<action>\S+)\s+(?P<attribute>\S+)(?:\s+as\s+(?P<encoding>\S+))?$")


@dataclass(frozen=True)
class Field:
    line: int
    name: str  # "new", "filter", …; for modify the action: "replace", "add", "delete"
    role: Role
    argument: str  # template source, rendered when the operation runs
    attribute: str = ""  # modify only
    encoding: str = ""  # modify only: "" or one of ENCODINGS


@dataclass(frozen=True)
class Operation:
    line: int
    name: str
    argument: str  # template source of the DN ("" when optional and absent)
    fields: tuple[Field, ...]

    @property
    def label(self) -> str:
        return f"line {self.line} ({self.name})"

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


def has_tags(argument: str) -> bool:
    return any(marker in argument for marker in _TAG_MARKERS)


def parse_script(text: str) -> list[Operation]:
    """Split a template into operations and fields. Pure, no rendering."""
    operations: list[Operation] = []
    header: tuple[int, str, str] | None = None
    fields: list[Field] = []

    def close() -> None:
        if header is not None:
            operations.append(_operation(header, fields))

    # Split on "\n" only, like Jinja counts lines (see executors.ssh.script).
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, colon, rest = stripped.partition(":")
        name = name.strip()
        if not colon:
            raise TemplateSyntaxProblem(f"expected 'name: argument', got {stripped!r}", number)
        # Only the one space after the colon is syntax; the rest belongs to the argument.
        argument = rest[1:] if rest.startswith(" ") else rest
        if line[0] in " \t":
            if header is None:
                raise TemplateSyntaxProblem(
                    f"indented field {name!r} comes before any operation", number
                )
            fields.append(_field(header[1], name, argument, number))
            continue
        if name not in OPERATIONS:
            hint = " (fields are indented under their operation)" if _is_field(name) else ""
            raise TemplateSyntaxProblem(
                f"unknown operation {name!r}{hint} (known: {', '.join(OPERATIONS)})", number
            )
        close()
        header, fields = (number, name, argument), []
    close()
    return operations


def _is_field(name: str) -> bool:
    return any(name in fields for fields in _FIELDS.values()) or name.split(" ")[0] in (
        MODIFY_ACTIONS
    )


def _field(operation: str, name: str, argument: str, line: int) -> Field:
    if operation == "modify":
        return _modify_field(name, argument, line)
    roles = _FIELDS[operation]
    if name not in roles:
        known = ", ".join(roles) or "none"
        raise TemplateSyntaxProblem(
            f"{operation}: has no field {name!r} (its fields: {known})", line
        )
    if not argument.strip():
        raise TemplateSyntaxProblem(f"{name}: needs a value", line)
    return Field(line, name, roles[name], argument)


def _modify_field(name: str, argument: str, line: int) -> Field:
    match = _MODIFY_FIELD.match(name)
    if match is None or match["action"] not in MODIFY_ACTIONS:
        raise TemplateSyntaxProblem(
            f"modify: fields read '<replace|add|delete> <attribute> [as <encoding>]: value', "
            f"got {name!r}",
            line,
        )
    attribute, encoding = match["attribute"], match["encoding"] or ""
    if not _ATTRIBUTE.match(attribute):
        raise TemplateSyntaxProblem(f"{attribute!r} is not an attribute name", line)
    if encoding and encoding not in ENCODINGS:
        raise TemplateSyntaxProblem(
            f"unknown value encoding {encoding!r} (known: {', '.join(ENCODINGS)})", line
        )
    if match["action"] != "delete" and not argument.strip():
        raise TemplateSyntaxProblem(f"{match['action']} {attribute}: needs a value", line)
    return Field(line, match["action"], Role.VALUE, argument, attribute, encoding)


def _operation(header: tuple[int, str, str], fields: list[Field]) -> Operation:
    line, name, argument = header
    if _ARGUMENT_REQUIRED[name] and not argument.strip():
        raise TemplateSyntaxProblem(f"{name}: needs a DN", line)
    if name != "modify":
        seen: set[str] = set()
        for field in fields:
            if field.name in seen:
                raise TemplateSyntaxProblem(f"{field.name}: given twice", field.line)
            seen.add(field.name)
        for required in _REQUIRED_FIELDS.get(name, ()):
            if required not in seen:
                raise TemplateSyntaxProblem(f"{name}: needs a {required}: field", line)
    elif not fields:
        raise TemplateSyntaxProblem("modify: needs at least one replace/add/delete field", line)
    return Operation(line, name, argument.strip(), tuple(fields))


def validate_script(text: str) -> list[Operation]:
    """Parse and check everything that can be checked before the tags are known."""
    operations = parse_script(text)
    if not operations:
        raise TemplateSyntaxProblem("the template runs nothing: add an operation", None)
    for operation in operations:
        _check_argument(operation.argument, Role.DN, operation.line, operation.name)
        for field in operation.fields:
            _check_argument(field.argument, field.role, field.line, field.name)
            if has_tags(field.argument):
                continue
            if field.name == "scope":
                parse_scope(field.argument, field.line)
            elif field.name == "expect":
                parse_count(field.argument, field.line)
            elif field.name == "attribute":
                parse_attribute(field.argument, field.line)
    return operations


def _check_argument(argument: str, role: Role, line: int, name: str) -> None:
    if role is not Role.VALUE and _SECRET_NAMES.search(argument):
        raise TemplateSyntaxProblem(
            f"{name}: a secret cannot go into a {role.value} (servers log DNs and filters in "
            "clear); pass it as a value",
            line,
        )
    if has_tags(argument):
        check_syntax(argument, first_line=line, context=_CONTEXTS.get(role))


# The context each role's tags are escaped for (ESCAPES); words and values go as they are.
_CONTEXTS = {Role.DN: "ldap_dn", Role.FILTER: "ldap_filter"}


def parse_scope(value: str, line: int) -> str:
    scope = value.strip()
    if scope not in SCOPES:
        raise TemplateSyntaxProblem(
            f"scope: expects one of {', '.join(SCOPES)}, got {scope!r}", line
        )
    return scope


def parse_count(value: str, line: int) -> int:
    try:
        count = int(value.strip())
    except ValueError:
        count = -1
    if count < 0:
        raise TemplateSyntaxProblem(
            f"expect: expects a number of entries, got {value.strip()!r}", line
        )
    return count


def parse_attribute(value: str, line: int) -> str:
    if not _ATTRIBUTE.match(value.strip()):
        raise TemplateSyntaxProblem(f"{value.strip()!r} is not an attribute name", line)
    return value.strip()


def encode_value(value: str, encoding: str) -> bytes:
    """The bytes sent for an attribute value. ``unicodepwd``: Active Directory wants the new
    password in double quotes, encoded UTF-16-LE (no BOM) — [MS-ADTS] 3.1.1.3.1.5.1."""
    if encoding == "unicodepwd":
        return f'"{value}"'.encode("utf-16-le")
    return value.encode("utf-8")


# -- what a template's tags mean at run time ------------------------------------------------


class DistinguishedName(str):
    """A whole DN computed by the executor (``user_dn``, ``bind_dn``, ``base_dn``).

    In a DN argument it is pasted as is (escaping it as one RDN value would break it); in a filter
    it is escaped like any other value, and in a value it is plain text.
    """


@escaping.escapes_for("ldap_dn")
def escape_dn_tag(value: object) -> str:
    if isinstance(value, DistinguishedName):
        return str(value)
    return escaping.ldap_dn(value)


@escaping.escapes_for("ldap_filter")
def escape_filter_tag(value: object) -> str:
    return escaping.ldap_filter(value)


ESCAPES: dict[Role, escaping.Escape] = {
    Role.DN: escape_dn_tag,
    Role.FILTER: escape_filter_tag,
    Role.WORD: escaping.plain,
    Role.VALUE: escaping.plain,
}


@dataclass(frozen=True)
class LdapContext(TemplateContext):
    """The template context plus the DNs the executor computed from the device's options."""

    user_dn: str = ""  # the credential's DN (its username through user_dn_template)
    bind_dn: str = ""  # the DN this session bound as
    base_dn: str = ""

    def __repr__(self) -> str:  # never print secrets
        return f"LdapContext(username={self.username!r}, user_dn={self.user_dn!r})"

    def as_mapping(self) -> dict[str, Any]:
        return {
            **super().as_mapping(),
            "user_dn": DistinguishedName(self.user_dn),
            "bind_dn": DistinguishedName(self.bind_dn),
            "base_dn": DistinguishedName(self.base_dn),
        }

    @classmethod
    def extend(
        cls, context: TemplateContext, user_dn: str, bind_dn: str, base_dn: str
    ) -> LdapContext:
        fields = {f.name: getattr(context, f.name) for f in dataclasses.fields(TemplateContext)}
        return cls(**fields, user_dn=user_dn, bind_dn=bind_dn, base_dn=base_dn)


def canonical_dn(dn: str) -> tuple[tuple[str, str], ...]:
    """A DN as ((type, value), …), unescaped and case-folded, to compare two spellings of one DN
    (``uid=x\\,y`` and ``uid=x\\2Cy``). Raises ValueError when the text is not a DN. Values are
    compared case-insensitively: right for uid/cn/ou/dc, the attributes DNs are made of."""
    parts: list[tuple[str, str]] = []
    kind: str | None = None
    buffer = bytearray()
    text = dn.strip()
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            pair = text[i + 1 : i + 3]
            if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                buffer.append(int(pair, 16))
                i += 3
            else:
                buffer.extend(text[i + 1].encode())
                i += 2
            continue
        if char == "=" and kind is None:
            kind = buffer.decode("utf-8", "replace").strip().lower()
            if not _ATTRIBUTE.match(kind):
                raise ValueError(f"{kind!r} is not an attribute type")
            buffer = bytearray()
        elif char in ",+" and kind is not None:
            parts.append((kind, buffer.decode("utf-8", "replace").strip().casefold()))
            kind, buffer = None, bytearray()
        else:
            buffer.extend(char.encode())
        i += 1
    if kind is None:
        raise ValueError("not a DN: every RDN needs type=value")
    parts.append((kind, buffer.decode("utf-8", "replace").strip().casefold()))
    return tuple(parts)


def looks_like_dn(text: str) -> bool:
    try:
        canonical_dn(text)
    except ValueError:
        return False
    return True


def same_dn(left: str, right: str) -> bool:
    try:
        return canonical_dn(left) == canonical_dn(right)
    except ValueError:
        return False

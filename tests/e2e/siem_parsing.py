"""Parse what rsyslog received back into fields, as a SIEM would: RFC 5424 structured data,
CEF (header and extension, with its escapes) and LEEF 2.0."""

from __future__ import annotations

import re

_HEADER = re.compile(
    r"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) "
    r"(?P<msgid>\S+) (?P<rest>.*)$"
)


def syslog(line: str) -> tuple[dict[str, str], str]:
    """The RFC 5424 header fields and what follows MSGID (structured data and message)."""
    match = _HEADER.match(line)
    assert match, line
    return match.groupdict(), match["rest"]


def structured_data(rest: str) -> tuple[str, dict[str, str]]:
    """The one SD-ELEMENT at the start of ``rest``: its id and params, unescaped."""
    assert rest.startswith("["), rest
    sd_id, i = "", 1
    while rest[i] != " ":
        sd_id += rest[i]
        i += 1
    params: dict[str, str] = {}
    while rest[i] != "]":
        assert rest[i] == " ", rest[i:]
        eq = rest.index("=", i)
        name = rest[i + 1 : eq]
        assert rest[eq + 1] == '"'
        j, value = eq + 2, ""
        while rest[j] != '"':
            if rest[j] == "\\" and rest[j + 1] in '"\\]':
                j += 1
            value += rest[j]
            j += 1
        params[name] = value
        i = j + 1
    return sd_id, params


def cef(message: str) -> tuple[list[str], dict[str, str]]:
    """The seven header fields (after CEF:0) and the extension's key=value pairs."""
    assert message.startswith("CEF:0|"), message
    fields: list[str] = []
    current, i, body = "", len("CEF:0|"), message
    while len(fields) < 6:
        ch = body[i]
        if ch == "\\" and body[i + 1] in "|\\":
            current += body[i + 1]
            i += 2
            continue
        if ch == "|":
            fields.append(current)
            current = ""
        else:
            current += ch
        i += 1
    extension = body[i:]
    pairs: dict[str, str] = {}
    # A key is a word followed by an unescaped '='; a value runs to the next key.
    keys = list(re.finditer(r"(?:^| )([A-Za-z0-9_]+)=", extension))
    keys = [k for k in keys if not _escaped(extension, k.end() - 1)]
    for n, key in enumerate(keys):
        end = keys[n + 1].start() if n + 1 < len(keys) else len(extension)
        raw = extension[key.end() : end]
        pairs[key.group(1)] = re.sub(
            r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m[1], m[1]), raw
        )
    return ["0", *fields], pairs


def _escaped(text: str, index: int) -> bool:
    backslashes = 0
    while index > 0 and text[index - 1] == "\\":
        backslashes += 1
        index -= 1
    return backslashes % 2 == 1


def leef(message: str) -> tuple[list[str], dict[str, str]]:
    """LEEF 2.0: the header fields and the attributes, split on the declared delimiter."""
    assert message.startswith("LEEF:2.0|"), message
    parts = message.split("|", 6)
    header, attributes = parts[:6], parts[6]
    delimiter = header[5]
    char = chr(int(delimiter[1:], 16)) if delimiter.startswith(("x", "0x")) else delimiter
    pairs = dict(item.split("=", 1) for item in attributes.split(char) if item)
    return header, pairs


def format_of(line: str) -> str:
    """Which of Keyturn's formats a received line is in: rfc5424, cef or leef."""
    rest = syslog(line)[1]
    if rest.startswith("- CEF:"):
        return "cef"
    if rest.startswith("- LEEF:"):
        return "leef"
    return "rfc5424"


def audit_id(line: str) -> int:
    """The audit id a received line carries, whatever its format."""
    fmt, rest = format_of(line), syslog(line)[1]
    if fmt == "cef":
        return int(cef(rest[2:])[1]["cs4"])
    if fmt == "leef":
        return int(leef(rest[2:])[1]["auditId"])
    return int(structured_data(rest)[1]["auditId"])

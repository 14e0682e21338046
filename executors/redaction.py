"""Redaction of secrets in every form a target, a driver or Python may give them back in.

A server that echoes a secret in an error rarely echoes it raw: PostgreSQL quotes the literal
it choked on (``'it''s'``), a JSON API escapes it, a URL carries it percent-encoded, a library
``repr()``s the bytes it sent (Active Directory's ``unicodePwd`` is UTF-16LE), a header carries
it in base64. Redacting only the raw text would let every one of those through, so ``redact``
replaces each of these forms of each secret.

Redact before truncating, quoting or ``repr()``-ing target output: a cut can leave a piece of
a secret that no form matches, and quoting makes new forms.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import shlex
from urllib.parse import quote, quote_plus

from templating.escaping import FILTERS

REDACTED = "***"
# A derived form shorter than this is too likely to occur in text by chance to be replaced
# everywhere; the secret itself is always replaced, whatever its length.
_MIN_FORM = 4


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """Replace every form of every secret in one pass, longest first, so one inside another is
    covered. A mask already in the text (a command shown with its secrets masked, or text
    redacted before) is itself one of the forms, replaced by itself: a secret such as ``*``
    must not turn each ``***`` into ``*********``."""
    forms = {form for secret in secrets if secret for form in secret_forms(secret)}
    if not forms:
        return text
    forms.add(REDACTED)
    # Only the forms the text holds (most text holds none): no pattern is built, so none is
    # compiled for each secret (the costliest part of a change's redaction) or kept, secret and
    # all, in the regular expression module's cache.
    present = sorted((form for form in forms if form in text), key=len, reverse=True)
    return _masked(text, present) if present else text


def _masked(text: str, forms: list[str]) -> str:
    """``text`` with each of ``forms`` (longest first) masked, left to right as an alternation
    of them would match: at the first place any starts, the longest that starts there."""
    pieces: list[str] = []
    start = 0
    # Where each form occurs next (-1: nowhere after ``start``), searched for again only once
    # a mask has passed it: each form's search moves through the text once.
    upcoming = {form: text.find(form) for form in forms}
    while True:
        for form, at in upcoming.items():
            if 0 <= at < start:
                upcoming[form] = text.find(form, start)
        found = [(at, -len(form)) for form, at in upcoming.items() if at >= 0]
        if not found:
            break
        at, minus_length = min(found)
        pieces += (text[start:at], REDACTED)
        start = at - minus_length
    pieces.append(text[start:])
    return "".join(pieces)


def redact_cut(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` redacted, where ``text`` was cut at its end before it could be redacted (a
    capped buffer): a piece of a secret left at the cut matches no form, so whatever ends the
    text and could be the start of a form is dropped as well."""
    redacted = redact(text, secrets)
    forms = {form for secret in secrets if secret for form in secret_forms(secret)}
    longest = max((len(form) for form in forms), default=0)
    for size in range(min(len(redacted), longest - 1), 0, -1):
        tail = redacted[-size:]
        if any(form.startswith(tail) for form in forms):
            return redacted[:-size]
    return redacted


def secret_forms(secret: str) -> frozenset[str]:
    """The secret and each encoding of it that may appear inside a longer text. Computed per
    call, never cached: a cache would keep secrets in memory after their activity ends."""
    forms = {secret}
    forms.update(_python_escapes(secret))
    forms.update(_text_escapes(secret))
    for data in (secret.encode("utf-8"), secret.encode("utf-16-le")):
        forms.update(_byte_forms(data))
    # UTF-16LE read back as one byte per character (a NUL after every ASCII letter).
    forms.add(secret.encode("utf-16-le").decode("latin-1"))
    return frozenset(form for form in forms if form == secret or len(form) >= _MIN_FORM)


def _python_escapes(secret: str) -> set[str]:
    """``repr()`` of the text and of its UTF-8 and UTF-16LE bytes, as they appear inside a
    longer repr: Python escapes ``'`` only when the whole string also holds a ``"``, so both
    variants (forced here by appending ``'"``, whose repr ``\\'"`` and closing quote are cut)."""
    quoted: list[str] = [repr(secret + "'\"")]
    quoted += [repr(data + b"'\"") for data in (secret.encode(), secret.encode("utf-16-le"))]
    forms = {secret.encode("unicode_escape").decode("ascii")}
    for text in quoted:
        inner = text[text.index("'") + 1 : -4]
        forms.update((inner, inner.replace("\\'", "'")))
    return forms


def _text_escapes(secret: str) -> set[str]:
    """JSON, URL, HTML, shell and every template escape (SQL, PowerShell, LDAP, regex...)."""
    forms = {
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        html.escape(secret),
        shlex.quote(secret),
        # Inside a longer single-quoted shell word, a quote is written '"'"'.
        secret.replace("'", "'\"'\"'"),
    }
    for escape in FILTERS.values():
        with contextlib.suppress(ValueError):  # an escape that refuses the value never sent it
            escaped = str(escape(secret))
            if len(escaped) >= 2 and escaped[0] == escaped[-1] and escaped[0] in "'\"":
                escaped = escaped[1:-1]  # inside a longer quoted string, or quoted by the server
            forms.add(escaped)
    return forms


def _byte_forms(data: bytes) -> set[str]:
    """Hex and base64 (standard and URL-safe) of the bytes. Base64 of a secret inside longer
    data (``user:password`` in a Basic header) depends on where it starts modulo 3: for each
    offset, the characters that encode the secret's bytes alone."""
    forms = {data.hex(), data.hex().upper()}
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + data).decode("ascii")
        start = -(-4 * offset // 3)  # characters that also carry bits of what comes before
        end = 4 * (offset + len(data)) // 3  # characters made of the secret's bits only
        for form in (encoded, encoded.replace("+", "-").replace("/", "_")):
            forms.add(form[start:end])
            if offset == 0:
                forms.add(form)  # the whole value, padding included
    return forms

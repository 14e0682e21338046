"""Secrets with every character escapes treat specially, and the encodings a target, a driver
or Python may show them in. Written out independently of executors.redaction, so that a form it
forgets makes a test fail."""

from __future__ import annotations

import base64
import json
import shlex
from collections.abc import Callable
from urllib.parse import quote, quote_plus

from hypothesis import strategies as st

# Secrets drawn from the characters every escape treats specially, and non-ASCII.
SPECIAL = "\\\"'$%&+/=:;@ ,\n\t"
NON_ASCII = "éßøΩЖ字😀\u2019"
secrets_strategy = st.text(
    alphabet=st.sampled_from(SPECIAL + NON_ASCII)
    | st.characters(codec="utf-8", exclude_characters="\x00"),
    min_size=8,
    max_size=24,
).filter(lambda s: any(c in SPECIAL for c in s) and any(ord(c) > 127 for c in s))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


ENCODINGS: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "repr": repr,
    "repr in a longer repr": lambda s: repr(f'said: "{s}" isn\'t it'),
    "repr of utf-8 bytes": lambda s: repr(s.encode()),
    "json": json.dumps,
    "json ascii-only": lambda s: json.dumps({"password": s}, ensure_ascii=True),
    "json unicode": lambda s: json.dumps({"password": s}, ensure_ascii=False),
    "url path": quote,
    "url component": lambda s: quote(s, safe=""),
    "form-urlencoded": lambda s: "a=1&password=" + quote_plus(s),
    "sql literal": lambda s: "near \"'" + s.replace("'", "''") + "'\"",
    "mysql literal": lambda s: "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'",
    "shell word": shlex.quote,
    "shell word inside a command": lambda s: "echo " + shlex.quote("x" + s),
    "powershell string": lambda s: "'" + s.replace("'", "''").replace("\u2019", "\u2019\u2019"),
    "base64": lambda s: _b64(s.encode()),
    "base64 at offset 1": lambda s: _b64(b"u:" + s.encode()),
    "base64 at offset 2": lambda s: _b64(b"user:" + s.encode() + b"!"),
    "basic auth header": lambda s: "Basic " + _b64(b"admin:" + s.encode()),
    "utf-16le bytes (repr)": lambda s: repr(s.encode("utf-16-le")),
    "ad unicodePwd (repr)": lambda s: repr(f'"{s}"'.encode("utf-16-le")),
    "utf-16le base64": lambda s: _b64(f'"{s}"'.encode("utf-16-le")),
    "utf-16le as latin-1": lambda s: s.encode("utf-16-le").decode("latin-1"),
    "hex": lambda s: s.encode().hex(),
}


def encodings_present(text: str, secret: str) -> list[str]:
    """The encodings of ``secret`` (as whole values) found in ``text``."""
    found = []
    for name, encode in ENCODINGS.items():
        form = encode(secret)
        # The encoded value as it stands in the text, minus quotes any encoder puts round it.
        core = form.strip("'\"") if name in ("repr", "json", "shell word") else form
        if core and core in text:
            found.append(name)
    return found


def assert_masked(texts: list[str], *secrets: str, where: str = "") -> None:
    """The texts show a mask (so the secret was there to be masked) and no encoding of any of
    ``secrets``."""
    assert "***" in "".join(texts), f"nothing was masked: {where}"
    for text in texts:
        for secret in secrets:
            assert not encodings_present(text, secret), (where, text)

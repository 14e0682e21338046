"""redact() removes every encoding of a secret a target, a driver or Python may show."""

from __future__ import annotations

import json
import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from executors.base import REDACTED, redact
from executors.redaction import redact_cut, secret_forms
from tests.executors.encodings import ENCODINGS, encodings_present, secrets_strategy


@settings(max_examples=60, deadline=None)
@given(secret=secrets_strategy)
@example(secret='it\'s a "test" $HOME 100% \\n é')
def test_every_encoding_is_redacted(secret: str) -> None:
    for name, encode in ENCODINGS.items():
        text = f"the server said: {encode(secret)} (error 1064)"
        redacted = redact(text, (secret,))
        assert REDACTED in redacted, name
        assert not encodings_present(redacted, secret), (name, redacted)
        assert "the server said: " in redacted and "(error 1064)" in redacted, (name, redacted)


@settings(max_examples=30, deadline=None)
@given(secret=secrets_strategy, other=secrets_strategy)
def test_one_secret_inside_another(secret: str, other: str) -> None:
    text = f"{secret}{other} / {json.dumps(secret + other)}"
    redacted = redact(text, (secret, secret + other, other))
    assert not encodings_present(redacted, secret)
    assert not encodings_present(redacted, other)


def test_text_without_secret_is_unchanged() -> None:
    text = "ALTER ROLE \"app\" PASSWORD '***'; ok 'quoted' 100% \\ $HOME"
    assert redact(text, ("correct horse battery",)) == text
    assert redact(text, ()) == text


def test_a_mask_is_not_redacted_again() -> None:
    # A secret made of the mask's own characters: each form is replaced once, and the masks
    # the first replacements made are not read again as secrets.
    once = redact("printf %s '*' and * and \"*\"", ("*",))
    assert once == "printf %s '***' and *** and \"***\""
    assert redact(once, ("*",)) == once


@settings(max_examples=30, deadline=None)
@given(secret=secrets_strategy)
def test_a_text_cut_inside_a_secret_keeps_no_piece_of_it(secret: str) -> None:
    """A buffer that stopped inside a secret (raw, or in one of its forms): the piece goes."""
    for form in (secret, secret.encode().hex(), json.dumps(secret)[1:-1]):
        for cut in range(1, len(form)):
            redacted = redact_cut(f"kept: {secret} then {form[:cut]}", (secret,))
            assert redacted.startswith(f"kept: {REDACTED} then"), (form, cut, redacted)
            assert len(redacted) <= len(f"kept: {REDACTED} then "), (form, cut, redacted)


@settings(max_examples=200, deadline=None)
@given(
    secrets=st.lists(st.text("ab*'\"", min_size=1, max_size=4), min_size=1, max_size=3),
    text=st.text("ab*'\" x", max_size=24),
)
def test_masking_matches_an_alternation_of_every_form(secrets: list[str], text: str) -> None:
    """The forms are masked as one regular expression of all of them, longest first, would:
    at the first place any starts, the longest one there (a small alphabet makes overlaps)."""
    forms = {form for secret in secrets for form in secret_forms(secret)} | {REDACTED}
    pattern = "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
    assert redact(text, tuple(secrets)) == re.sub(pattern, REDACTED, text)


def test_no_secret_is_left_in_the_regular_expression_cache() -> None:
    secret = "hunter2" + "x" * 12  # nothing re.escape() would change
    redact(f"echo {secret} | {json.dumps(secret)}", (secret,))
    cached = {**getattr(re, "_cache", {}), **getattr(re, "_cache2", {})}  # CPython's, by version
    assert not [key for key in cached if secret in repr(key)]

"""Password generation per policy, property-tested."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store.passwords import SYMBOLS, PasswordRules, generate_password

CLASSES = {
    "lowercase": string.ascii_lowercase,
    "uppercase": string.ascii_uppercase,
    "digits": string.digits,
    "symbols": SYMBOLS,
}


@st.composite
def rules(draw: st.DrawFn) -> PasswordRules:
    enabled = draw(st.sets(st.sampled_from(sorted(CLASSES)), min_size=1))
    exclude = draw(st.text(alphabet=string.printable.strip() + " ", max_size=10))
    for name in enabled:  # keep every enabled class non-empty after exclusions
        exclude = exclude.replace(CLASSES[name][0], "")
    return PasswordRules(
        length=draw(st.integers(min_value=len(enabled), max_value=128)),
        exclude=exclude,
        **{name: name in enabled for name in CLASSES},
    )


@settings(max_examples=300)
@given(rules())
def test_generated_password_follows_the_rules(r: PasswordRules) -> None:
    password = generate_password(r)
    assert len(password) == r.length
    assert not set(password) & set(r.exclude)
    for name, chars in CLASSES.items():
        present = any(c in chars for c in password)
        assert present == getattr(r, name), name  # every enabled class, no disabled one


def test_passwords_differ() -> None:
    assert len({generate_password(PasswordRules()) for _ in range(200)}) == 200


@pytest.mark.parametrize(
    ("r", "message"),
    [
        (
            PasswordRules(lowercase=False, uppercase=False, digits=False, symbols=False),
            "at least one",
        ),
        (
            PasswordRules(
                digits=True, lowercase=False, uppercase=False, symbols=False, exclude="0123456789"
            ),
            "removes every character",
        ),
        (PasswordRules(length=3), "shorter than"),
    ],
)
def test_impossible_rules_are_refused(r: PasswordRules, message: str) -> None:
    assert message in (r.problem() or "")
    with pytest.raises(ValueError, match=message):
        generate_password(r)


@settings(max_examples=300)
@given(rules())
def test_every_generated_password_fits_the_rules_it_was_made_by(r: PasswordRules) -> None:
    assert r.violation(generate_password(r)) is None


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("Aa1!aaaaaaa", "is shorter than the policy's length of 12"),
        ("Aa1!" + "a" * 1021, "is longer than 1024"),
        ("Aa1!aaaa\naaaa", "control"),
        ("aa1!aaaaaaaa", "has no uppercase letters"),
        ("Aa1!aaaaaaaé", "does not allow"),
        ("Aa1!aaaaaaaq", "excludes"),
    ],
)
def test_a_supplied_password_that_breaks_the_rules_is_told_why_without_quoting_it(
    password: str, message: str
) -> None:
    problem = PasswordRules(length=12, exclude="q").violation(password)
    assert problem is not None and message in problem
    assert password not in problem


def test_a_disabled_class_is_refused_in_a_supplied_password() -> None:
    assert "leaves out" in (PasswordRules(symbols=False, length=8).violation("Aa1!aaaa") or "")

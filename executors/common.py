"""Small pieces every executor shares: the secrets of a request, parsing a template before
connecting, the verify template of a login check, the masked context of a transcript.

Kept out of base.py so that the plugin interface stays readable on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TypeVar

from executors.base import REDACTED, Account, ConfigurationError, LoginRequest, Target
from templating import TemplateContext, TemplateSyntaxProblem

Parsed = TypeVar("Parsed")
Context = TypeVar("Context", bound=TemplateContext)


def directive_lines(text: str, directives: Iterable[str]) -> list[tuple[int, str, str]]:
    """``(line number, directive, argument)`` for each ``directive: argument`` line of a
    line-based template; blank and ``#`` lines are skipped. Pure, no rendering.

    Only the one space after the colon is syntax; anything further belongs to the argument
    (sending leading spaces must stay possible). Lines are split on "\n" only, as Jinja counts
    them: str.splitlines() would also split on form feeds and Unicode separators and make the
    line numbers in error messages wrong.
    """
    known = frozenset(directives)
    found = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        directive, colon, rest = line.lstrip().partition(":")
        directive = directive.strip()
        if not colon:
            raise TemplateSyntaxProblem(f"expected 'directive: argument', got {stripped!r}", number)
        if directive not in known:
            names = ", ".join(sorted(known))
            raise TemplateSyntaxProblem(f"unknown directive {directive!r} (known: {names})", number)
        found.append((number, directive, rest[1:] if rest.startswith(" ") else rest))
    return found


def request_secrets(context: TemplateContext | None, account: Account) -> tuple[str, ...]:
    """Everything a transcript or an error must never show: the context's secrets (a login
    check may have no context) and the password or private key the account connects with."""
    return tuple(
        s
        for s in (*(context.secrets if context else ()), account.password, account.private_key)
        if s
    )


def parse_template(target: Target, template: str, parse: Callable[[str], Parsed]) -> Parsed:
    """``parse(template)``, its syntax problem raised as ConfigurationError.

    Called before connecting: a broken template must not cost a login on the target.
    """
    try:
        return parse(template)
    except TemplateSyntaxProblem as exc:
        raise ConfigurationError(
            target.name, "template", f"{exc}; fix the template (it does not parse)"
        ) from None


def verify_template(
    request: LoginRequest, parse: Callable[[str], Parsed]
) -> tuple[Parsed, TemplateContext] | None:
    """A login check's verify template, parsed, with the context it renders in; None when the
    check is a bare login. Raises ConfigurationError before connecting, like parse_template."""
    if request.template is None:
        return None
    if request.context is None:
        raise ConfigurationError(
            request.target.name, "template", "a verify template needs a context"
        )
    return parse_template(request.target, request.template, parse), request.context


def masked(context: Context) -> Context:
    """The context with every secret replaced by ``***``, to render what the transcript shows.

    Rendering through the mask (rather than redacting the real rendering) also hides secrets
    that went through an escape or a filter; and a field whose real and masked renderings
    differ is one that carries a secret.
    """
    return dataclasses.replace(
        context,
        current_password=REDACTED if context.current_password else "",
        new_password=REDACTED if context.new_password else "",
        auth_password=REDACTED if context.auth_password else "",
    )

"""Helpers shared by the executor tests: requests pointed at a test server, and leak checks."""

from __future__ import annotations

import asyncio

import pytest

from executors.base import ExecutorError, Target
from templating import TemplateContext


def make_target(name: str, address: str, port: int, /, **overrides: object) -> Target:
    """A Target with test timeouts (5s connect, 10s read). Positional-only, so that a test can
    still override any field (the port of a closed socket, say) through ``overrides``."""
    fields: dict[str, object] = {
        "name": name,
        "address": address,
        "port": port,
        "connect_timeout": 5.0,
        "read_timeout": 10.0,
    }
    fields.update(overrides)
    return Target(**fields)  # type: ignore[arg-type]


def make_context(
    hostname: str,
    address: str,
    port: int,
    username: str,
    current: str,
    new: str,
    auth_username: str = "",
    auth_password: str = "",
) -> TemplateContext:
    return TemplateContext(
        username=username,
        current_password=current,
        new_password=new,
        hostname=hostname,
        address=address,
        port=port,
        auth_username=auth_username,
        auth_password=auth_password,
    )


def assert_no_secret(texts: list[str], *secrets: str) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"a secret leaked into {text!r}"


def error_texts(exc: ExecutorError) -> list[str]:
    """Everything of an error that may reach a log, an API answer or a person."""
    return [str(exc), exc.cause, exc.transcript, repr(exc)]


def renders_on_the_event_loop(monkeypatch: pytest.MonkeyPatch, module: object) -> list[bool]:
    """Patch ``module.render`` to note, for each call, whether it ran on an event loop's thread
    (rendering must not: it is CPU work with a budget of seconds)."""
    calls: list[bool] = []
    real = module.render  # type: ignore[attr-defined]

    def noting(*args: object, **kwargs: object) -> str:
        try:
            asyncio.get_running_loop()
            calls.append(True)
        except RuntimeError:
            calls.append(False)
        return str(real(*args, **kwargs))

    monkeypatch.setattr(module, "render", noting)
    return calls

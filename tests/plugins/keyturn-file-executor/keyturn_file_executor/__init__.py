"""An executor whose "target" is a JSON file of accounts ({"user": "password"}).

Deliberately tiny: it exists so a test can install a third-party plugin and run an operation
through it. Template lines: ``set-password: <value>`` sets the credential's password.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from executors.base import (
    AuthenticationFailed,
    ConnectFailed,
    LoginRequest,
    LoginResult,
    RunRequest,
    RunResult,
    Target,
)
from templating import TemplateSyntaxProblem, check_syntax, render

DIRECTIVE = "set-password: "


class FileExecutor:
    name: ClassVar[str] = "file"
    syntax: ClassVar[str] = "lines 'set-password: <value>'"
    default_templates: ClassVar[dict[str, str]] = {
        "change": "file/set-password",
        "change-as-admin": "file/set-password",
        "verify": "file/verify",
    }
    default_port: ClassVar[int] = 1

    def validate(self, template: str) -> None:
        for number, line in _lines(template):
            if not line.startswith(DIRECTIVE):
                raise TemplateSyntaxProblem(f"expected '{DIRECTIVE}<value>'", number)
            check_syntax(line.removeprefix(DIRECTIVE), first_line=number)

    async def run(self, request: RunRequest) -> RunResult:
        accounts = _load(request.target)
        if accounts.get(request.account.username) != request.account.password:
            raise AuthenticationFailed(request.target.name, "login", "password refused")
        for number, line in _lines(request.template):
            value = render(line.removeprefix(DIRECTIVE), request.context, number)
            accounts[request.context.username] = value
        Path(request.target.options["path"]).write_text(json.dumps(accounts))  # noqa: ASYNC240  (tiny file)
        return RunResult(transcript="set-password: ***")

    async def check_login(self, request: LoginRequest) -> LoginResult:
        accounts = _load(request.target)
        return LoginResult(ok=accounts.get(request.account.username) == request.account.password)


def _lines(template: str) -> list[tuple[int, str]]:
    return [
        (number, line)
        for number, line in enumerate(template.splitlines(), start=1)
        if line.strip() and not line.startswith("#")
    ]


def _load(target: Target) -> dict[str, str]:
    try:
        accounts: dict[str, str] = json.loads(Path(target.options["path"]).read_text())
    except (KeyError, OSError) as exc:
        raise ConnectFailed(target.name, "open", f"cannot read the account file: {exc}") from None
    return accounts

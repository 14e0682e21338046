"""The ssh executor running task templates (RunRequest.task): output, exit status, redaction,
against a real OpenSSH server (no Temporal involved)."""

from __future__ import annotations

import dataclasses

import pytest

from executors.base import Account, ChangeRejected, RunRequest
from executors.ssh import SshExecutor
from executors.ssh import session as session_module
from tests.executors.helpers import make_context, make_target
from tests.servers.sshd import Sshd, Users

EXECUTOR = SshExecutor()
PASSWORD = "Task-pass w0rd;$'x"


def _request(sshd: Sshd, user: str, body: str, task: bool = True, **params: object) -> RunRequest:
    context = make_context("test-host", "127.0.0.1", sshd.port, user, PASSWORD, "")
    return RunRequest(
        make_target("test-host", "127.0.0.1", sshd.port, host_keys=(sshd.host_key_line,)),
        Account(user, PASSWORD),
        body,
        dataclasses.replace(context, params=params),  # type: ignore[arg-type]
        task=task,
    )


async def test_the_last_command_s_output_and_exit_status_are_reported(
    sshd: Sshd, ssh_users: Users
) -> None:
    user = ssh_users.create(PASSWORD)
    body = "exec: echo {{ params.word }} {{ current_password }} >&2; echo out; exit 4\n"

    result = await EXECUTOR.run(_request(sshd, user, body, word="a'b"))

    assert result.exit_status == 4
    # stderr too (its own channel stream: its order against stdout is the server's), the
    # password masked.
    assert sorted((result.output or "").splitlines(keepends=True)) == ["a'b ***\n", "out\n"]
    assert PASSWORD not in result.transcript and "= exit 4" in result.transcript


async def test_a_command_reading_its_input_gets_its_end(sshd: Sshd, ssh_users: Users) -> None:
    user = ssh_users.create(PASSWORD)

    result = await EXECUTOR.run(_request(sshd, user, "exec: cat; echo done\n"))

    assert (result.exit_status, result.output) == (0, "done\n")


async def test_an_exit_directive_still_decides_and_a_change_reports_no_output(
    sshd: Sshd, ssh_users: Users
) -> None:
    user = ssh_users.create(PASSWORD)
    with pytest.raises(ChangeRejected, match="exited with status 1, expected 0"):
        await EXECUTOR.run(_request(sshd, user, "exec: false\nexit: 0\n"))

    change = await EXECUTOR.run(_request(sshd, user, "exec: echo hi\nexit: 0\n", task=False))

    assert (change.output, change.exit_status) == (None, None)


async def test_output_is_cut_after_it_is_redacted(
    sshd: Sshd, ssh_users: Users, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret straddling the cut is masked before the cut, never left in part."""
    monkeypatch.setattr(session_module, "OUTPUT_LIMIT", 10)
    user = ssh_users.create(PASSWORD)

    result = await EXECUTOR.run(_request(sshd, user, "exec: echo 1234567{{ current_password }}\n"))

    assert result.output == "1234567***"

"""The ssh executor running task templates (RunRequest.task): output, exit status, redaction,
against a real OpenSSH server (no Temporal involved)."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from executors.base import Account, ChangeRejected, RunRequest
from executors.shipped import shipped_templates
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


async def test_a_secret_at_the_end_of_what_was_kept_is_not_left_in_part(
    sshd: Sshd, ssh_users: Users, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Output past twice the limit is not kept, and what is kept ends where a read ended,
    maybe inside a secret. Here the whole password (masked to 3 characters: the redacted text
    is far under the limit), then its first 7 characters, then the rest: the reads are apart
    (the host sleeps between them), so the kept output ends inside the second password."""
    monkeypatch.setattr(session_module, "OUTPUT_LIMIT", 10)  # kept while under 20 characters
    user = ssh_users.create(PASSWORD)
    body = (
        "exec: printf %s {{ current_password }}; sleep 1; printf %s {{ current_password[:7] }};"
        " sleep 1; printf %s {{ current_password[7:] }}\n"
    )

    result = await EXECUTOR.run(_request(sshd, user, body))

    assert result.exit_status == 0
    # "***" when the reads came apart; "******" if a busy event loop read the last two as one
    # (then nothing was cut inside a secret). Never a piece of the password.
    assert result.output in ("***", "******"), result.output


@pytest.fixture
def writable_dir() -> Iterator[Path]:
    """A directory every account may write to (a test account's commands leave marks here)."""
    with tempfile.TemporaryDirectory(prefix="kt-injection-") as name:
        Path(name).chmod(0o777)
        yield Path(name)


async def test_a_parameter_cannot_run_a_command_of_its_own(
    sshd: Sshd, ssh_users: Users, writable_dir: Path
) -> None:
    """The shipped ssh/service-restart with a service name that tries to run commands of its
    own (after ';', in $(…), in backquotes): none runs; systemctl gets it as one name."""
    user = ssh_users.create(PASSWORD)
    ssh_users.make_admin(user, ("/usr/bin/systemctl",))
    markers = [writable_dir / name for name in ("semicolon", "subshell", "backquote", "control")]
    (restart,) = [t for t in shipped_templates() if t.name == "ssh/service-restart"]
    service = f"x; touch {markers[0]}; echo $(touch {markers[1]}) `touch {markers[2]}`"

    result = await EXECUTOR.run(_request(sshd, user, restart.body, service=service))
    control = await EXECUTOR.run(
        _request(sshd, user, "exec: touch {{ params.path }}\n", path=str(markers[3]))
    )

    assert control.exit_status == 0 and markers[3].exists()  # a touch as this account works
    assert [m.exists() for m in markers[:3]] == [False, False, False], result.output
    assert result.exit_status != 0  # systemctl was asked for a unit of that odd name
    assert "systemctl restart -- 'x; touch " in result.transcript

"""SSH keys against a real OpenSSH server: logging in with a private key, and the shipped key
templates editing authorized_keys (by exact key, keeping every other line, under concurrency)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import pytest

from executors.base import Account, LoginRequest, RunRequest, Target
from executors.shipped import shipped_templates
from executors.ssh import SshExecutor
from store.ssh_keys import generate_private_key, public_key_line
from templating import TemplateContext
from tests.executors.helpers import make_context, make_target
from tests.servers.sshd import Sshd, Users

TEMPLATES = {template.name: template.body for template in shipped_templates()}
EXECUTOR = SshExecutor()
# Lines a person put there: another key with options, a comment, a blank line, no final newline.
UNRELATED = (
    "# keys of the team\n"
    'from="10.0.0.0/8",no-pty ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherKeyOther1 ops\n'
    "\n"
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCunrelated backup@host"
)


@pytest.fixture
def other_sshd() -> Iterator[Sshd]:
    """A second host as far as keys go: its own AuthorizedKeysFile for the same accounts."""
    server = Sshd(authorized_keys_file=".ssh/authorized_keys_host2")
    server.start()
    try:
        yield server
    finally:
        server.close()


def _target(sshd: Sshd, **options: object) -> Target:
    return make_target(
        "key-host", "127.0.0.1", sshd.port, host_keys=(sshd.host_key_line,), options=options
    )


def _context(sshd: Sshd, user: str, public_key: str) -> TemplateContext:
    base = make_context("key-host", "127.0.0.1", sshd.port, user, "", "")
    return dataclasses.replace(base, values={"public_key": public_key})


async def _edit(sshd: Sshd, user: str, login_key: str, template: str, public_key: str) -> str:
    options = {"authorized_keys_file": sshd.authorized_keys_file}
    result = await EXECUTOR.run(
        RunRequest(
            _target(sshd, **options),
            Account(user, "", private_key=login_key),
            TEMPLATES[template],
            _context(sshd, user, public_key),
        )
    )
    return result.transcript


async def test_a_key_logs_in_and_a_key_not_authorized_is_refused(
    sshd: Sshd, ssh_users: Users
) -> None:
    user = ssh_users.create("Unused-password-1")
    key, stranger = generate_private_key("ed25519", None), generate_private_key("rsa", 2048)
    ssh_users.write_authorized_keys(user, public_key_line(key) + "\n")

    ok = await EXECUTOR.check_login(LoginRequest(_target(sshd), Account(user, "", private_key=key)))
    refused = await EXECUTOR.check_login(
        LoginRequest(_target(sshd), Account(user, "", private_key=stranger))
    )

    assert ok.ok and not refused.ok


async def test_install_then_remove_touches_only_the_key_lines(sshd: Sshd, ssh_users: Users) -> None:
    user = ssh_users.create("Unused-password-1")
    old, new = generate_private_key("ed25519", None), generate_private_key("ed25519", None)
    old_line, new_line = public_key_line(old, "keyturn:old"), public_key_line(new, "keyturn:new")
    # The old key also appears with options a person added: removing it removes that line too.
    blob = old_line.split()[1]
    ssh_users.write_authorized_keys(
        user, f"{UNRELATED}\n{old_line}\nno-agent-forwarding ssh-ed25519 {blob} again"
    )

    transcript = await _edit(sshd, user, old, "ssh/authorized-keys-add", new_line)
    again = await _edit(sshd, user, old, "ssh/authorized-keys-add", new_line)
    after_add = ssh_users.read_authorized_keys(user)
    await _edit(sshd, user, new, "ssh/authorized-keys-remove", old_line)
    after_remove = ssh_users.read_authorized_keys(user)

    assert "keyturn-keys-ok: add" in transcript and "already present" in again
    assert (
        after_add
        == f"{UNRELATED}\n{old_line}\nno-agent-forwarding ssh-ed25519 {blob} again\n{new_line}\n"
    )
    assert after_remove == f"{UNRELATED}\n{new_line}\n"
    assert await ssh_users.key_works(user, new)
    assert not await ssh_users.key_works(user, old)


async def test_the_device_option_names_another_authorized_keys_file(
    sshd: Sshd, other_sshd: Sshd, ssh_users: Users
) -> None:
    """Two hosts sharing accounts but not key files: a key installed on one is not on the other."""
    user = ssh_users.create("Unused-password-1")
    old, new = generate_private_key("ed25519", None), generate_private_key("ed25519", None)
    ssh_users.write_authorized_keys(user, public_key_line(old) + "\n", other_sshd)

    await _edit(other_sshd, user, old, "ssh/authorized-keys-add", public_key_line(new))

    assert await ssh_users.key_works(user, new, other_sshd)
    assert not await ssh_users.key_works(user, new, sshd)


async def test_concurrent_installs_on_one_file_lose_none(sshd: Sshd, ssh_users: Users) -> None:
    """Credentials sharing an account edit one file side by side: the lock serialises them."""
    user = ssh_users.create("Unused-password-1")
    login = generate_private_key("ed25519", None)
    ssh_users.write_authorized_keys(user, f"{UNRELATED}\n{public_key_line(login)}\n")
    lines = [public_key_line(generate_private_key("ed25519", None), f"k{i}") for i in range(8)]

    await asyncio.gather(
        *(_edit(sshd, user, login, "ssh/authorized-keys-add", line) for line in lines)
    )

    text = ssh_users.read_authorized_keys(user)
    assert text.startswith(UNRELATED + "\n")
    assert all(text.count(line) == 1 for line in lines), text
    assert not list(ssh_users.authorized_keys_path(user).parent.glob("authorized_keys.keyturn.*"))

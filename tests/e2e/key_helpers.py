"""Two SSH hosts holding one account's keys, and an ssh-key credential on them, for the key
tests (end to end and fault). The hosts are two real sshd processes that share the machine's
accounts but read different authorized_keys files (the device option authorized_keys_file), so
a key authorized on one is refused by the other, as between two machines."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from store.ssh_keys import generate_private_key, public_key_line
from tests.executors.encodings import encodings_present
from tests.servers.sshd import Sshd, Users

SECOND_HOST_KEYS = ".ssh/authorized_keys_host2"
# What a person keeps in the file beside Keyturn's key: another key with options, a comment, a
# blank line. Left byte for byte as it is by every change.
UNRELATED = (
    "# the team's keys\n"
    'from="10.0.0.0/8",no-pty ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUnrelatedKeyOne ops\n'
    "\n"
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCUnrelatedKeyTwo backup@host\n"
)

Post = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture(scope="module")
def second_host() -> Iterator[Sshd]:
    server = Sshd(authorized_keys_file=SECOND_HOST_KEYS)
    server.start()
    try:
        yield server
    finally:
        server.close()


@dataclass(frozen=True)
class KeyAccount:
    """An account whose old key is authorized on both hosts, and its credential."""

    username: str
    old_key: str
    credential_id: str
    device_ids: tuple[str, str]
    hosts: tuple[Sshd, Sshd]

    async def logs_in_everywhere(self, users: Users, key: str) -> list[bool]:
        return [await users.key_works(self.username, key, host) for host in self.hosts]

    def files(self, users: Users) -> list[str]:
        return [users.read_authorized_keys(self.username, host) for host in self.hosts]


async def key_device(post: Post, sshd: Sshd) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": f"keyhost-{secrets.token_hex(4)}",
        "address": "127.0.0.1",
        "port": sshd.port,
        "executor": "ssh",
        "host_keys": [sshd.host_key_line],
    }
    if sshd.authorized_keys_file != ".ssh/authorized_keys":
        body["options"] = {"authorized_keys_file": sshd.authorized_keys_file}
    return await post("/v1/devices", body)


async def key_account(
    post: Post,
    users: Users,
    hosts: tuple[Sshd, Sshd],
    policy_id: str,
    device: dict[str, Any] | None = None,
    **extra: Any,
) -> KeyAccount:
    """A fresh account, its old key authorized on both hosts beside UNRELATED lines, and an
    ssh-key credential on the first host (``device``, or a new one) with the second as its key
    target."""
    username = users.create(f"Unused-{secrets.token_hex(8)}")
    old_key = generate_private_key("ed25519", None)
    for host in hosts:
        users.write_authorized_keys(username, UNRELATED + public_key_line(old_key) + "\n", host)
    devices = [device or await key_device(post, hosts[0]), await key_device(post, hosts[1])]
    body = {
        "device_id": devices[0]["id"],
        "username": username,
        "secret_type": "ssh-key",
        "private_key": old_key,
        "key_targets": [devices[1]["id"]],
        "policy_id": policy_id,
        **extra,
    }
    cred = await post("/v1/credentials", body)
    return KeyAccount(username, old_key, cred["id"], (devices[0]["id"], devices[1]["id"]), hosts)


def key_leaks(text: str, private_key: str) -> list[str]:
    """Where a private key shows in ``text``: whole (every encoding of the tests' encodings
    module), or its base64 body, joined or line by line (a key cut or re-wrapped). The file
    embeds the public key, which is no secret: a body line that is part of it is skipped."""
    found = [f"whole key as {name}" for name in encodings_present(text, private_key)]
    public = public_key_line(private_key)
    body_lines = [
        line
        for line in private_key.strip().splitlines()
        if not line.startswith("---") and line not in public
    ]
    if "".join(body_lines) in text:
        found.append("key body joined")
    found += [f"key body line {i}" for i, line in enumerate(body_lines) if line in text]
    return found

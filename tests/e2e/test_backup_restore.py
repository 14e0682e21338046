"""Backup while 20 changes run, lose the host, restore into a fresh data directory, start
Keyturn on it: every credential's current secret logs in, or the credential is flagged and the
verify requested on start confirms which secret the target has. Real sshd, real Temporal dev
server, the real ``keyturn`` command for backup, restore and both workers.

Templates hold the changes at known points when the backup is taken, so each of the three
cases is certain to be in it: committed before the backup; the target changed but the vault not
yet (the interrupted change's pending secret is what the target has); passwd waiting at its
prompt (the target still has the current secret)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from temporalio.service import RPCError

from keyturn.settings import Settings
from starter.app import create_app
from store.engine import make_engine
from store.models import Credential, Operation, SecretState, SecretVersion
from store.vault import Vault
from tests.e2e.conftest import ADMIN_TOKEN, Stack
from tests.e2e.helpers import approve_template
from tests.servers.sshd import Sshd, Users

KEYTURN = str(Path(sys.executable).with_name("keyturn"))
OLD = "B4ckup-old-pass"
PASSPHRASE = "backup passphrase for the test"
PASSWD = (Path(__file__).parents[2] / "executors/templates/ssh/linux-passwd.tpl").read_text()
HELD_AT_PROMPT = """# kind: change
spawn: passwd
expect: (?i)current password:
send: {{ current_password }}
expect: (?i)new password:
send: {{ new_password }}
expect: keyturn-never-appears
"""
COMMITTED, TARGET_CHANGED, AT_PROMPT = range(7), range(7, 14), range(14, 20)


def _env(stack: Stack, data_dir: Path, task_queue: str, **more: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    return {
        **inherited,
        "KEYTURN_TEMPORAL_ADDRESS": stack.client.service_client.config.target_host,
        "KEYTURN_DATA_DIR": str(data_dir),
        "KEYTURN_TASK_QUEUE": task_queue,
        "KEYTURN_BACKUP_PASSPHRASE": PASSPHRASE,
        **more,
    }


async def _keyturn(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        KEYTURN, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _worker(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as sink:
        return await asyncio.create_subprocess_exec(
            KEYTURN, "worker", env=env, stdout=sink, stderr=asyncio.subprocess.STDOUT
        )


async def _stop(process: asyncio.subprocess.Process, sig: int) -> None:
    if process.returncode is None:
        process.send_signal(sig)
        await asyncio.wait_for(process.wait(), 60)


async def _until(check: Any, what: str, within: float = 60) -> None:
    """Poll ``check()`` (sync or async) until true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert loop.time() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(0.1)


async def _running(args: list[str]) -> bool:
    pgrep = await asyncio.create_subprocess_exec("pgrep", *args, stdout=asyncio.subprocess.DEVNULL)
    return await pgrep.wait() == 0


async def _count(pattern: str) -> int:
    pgrep = await asyncio.create_subprocess_exec(
        "pgrep", "-c", "-f", pattern, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await pgrep.communicate()
    return int(out.decode().strip() or 0)


def _statuses(engine: Engine, operation_ids: list[str]) -> list[str]:
    with Session(engine) as db:
        return [str(db.get(Operation, i).status) for i in operation_ids]  # type: ignore[union-attr]


@pytest.fixture
async def hold() -> AsyncIterator[str]:
    name = f"keyturn-held-{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        killer = await asyncio.create_subprocess_exec("pkill", "-f", name)
        await killer.wait()


async def test_backup_during_20_changes_then_restore_and_start_on_a_fresh_data_directory(
    stack: Stack, sshd: Sshd, ssh_users: Users, tmp_path: Path, hold: str
) -> None:
    # --- Keyturn "A": its own data directory, store and task queue; its worker a process.
    dir_a = tmp_path / "a"
    queue_a = f"keyturn-a-{secrets.token_hex(4)}"
    settings_a = Settings(
        data_dir=dir_a,
        master_key=stack.settings.master_key,
        admin_token=ADMIN_TOKEN,
        task_queue=queue_a,
    )
    dir_a.mkdir()
    engine_a = make_engine(settings_a.resolved_database_url)
    env_a = _env(stack, dir_a, queue_a, KEYTURN_MASTER_KEY=stack.settings.master_key or "")
    worker_a = await _worker(env_a, tmp_path / "worker-a.log")
    api = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(settings_a, engine_a, stack.client)),
        base_url="http://keyturn-a.test",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    worker_b: asyncio.subprocess.Process | None = None
    accepted: list[dict[str, Any]] = []
    try:

        async def post(path: str, body: dict[str, Any], expect: int = 201) -> dict[str, Any]:
            response = await api.post(path, json=body)
            assert response.status_code == expect, response.text
            result: dict[str, Any] = response.json()
            return result

        device = await post(
            "/v1/devices",
            {
                "name": f"host-{secrets.token_hex(4)}",
                "address": "127.0.0.1",
                "port": sshd.port,
                "host_keys": [sshd.host_key_line],
                "max_concurrent_operations": 20,
            },
        )
        pol = await post(
            "/v1/policies",
            {
                "name": f"policy-{secrets.token_hex(4)}",
                "max_attempts": 1,
                "read_timeout_seconds": 120,
            },
        )
        templates = {}
        for name, body in (
            ("after", PASSWD + f"exec: exec -a {hold} sleep 300\nexpect: keyturn-never-appears\n"),
            ("prompt", HELD_AT_PROMPT),
        ):
            templates[name] = f"ssh/backup-{name}-{secrets.token_hex(4)}"
            saved = await post(
                "/v1/templates",
                {"name": templates[name], "executor": "ssh", "kind": "change", "body": body},
            )
            await approve_template(api, templates[name], saved["version"])
        users = [ssh_users.create(OLD) for _ in range(20)]
        creds = []
        for i, user in enumerate(users):
            extra = (
                {"change_template": templates["after"]} if i in TARGET_CHANGED
                else {"change_template": templates["prompt"]} if i in AT_PROMPT
                else {}
            )  # fmt: skip
            creds.append(
                await post(
                    "/v1/credentials",
                    {
                        "device_id": device["id"],
                        "username": user,
                        "password": OLD,
                        "policy_id": pol["id"],
                        **extra,
                    },
                )  # fmt: skip
            )

        accepted = await asyncio.gather(
            *(post(f"/v1/credentials/{c['id']}/operations", {"kind": "change"}, 202) for c in creds)
        )
        committed_ids = [accepted[i]["operation_id"] for i in COMMITTED]
        await _until(
            lambda: set(_statuses(engine_a, committed_ids)) == {"succeeded"}, "7 changes commit"
        )
        await _until(lambda: _count_is(hold, len(TARGET_CHANGED)), "7 changes held after passwd")
        for i in AT_PROMPT:
            await _until(lambda u=users[i]: _running(["-U", u, "-x", "passwd"]), "passwd at prompt")

        # --- The backup, taken while A runs.
        file = tmp_path / "keyturn.backup"
        started = time.perf_counter()
        code, out, err = await _keyturn(env_a, "backup", str(file))
        backup_seconds = time.perf_counter() - started
        assert code == 0, err
        print(f"backup of {file.stat().st_size} bytes took {backup_seconds:.2f}s")

        # --- A's host is lost: its worker killed, its Temporal state gone with it.
        await _stop(worker_a, signal.SIGKILL)
        for workflow_id in [a["workflow_id"] for a in accepted] + [f"keyturn-slots-{device['id']}"]:
            with contextlib.suppress(RPCError):  # those that had ended
                await stack.client.get_workflow_handle(workflow_id).terminate("host lost")
        pending_at_backup = {}
        with Session(engine_a) as db:
            for i in TARGET_CHANGED:
                op = db.get(Operation, accepted[i]["operation_id"])
                assert op is not None and op.pending_version_id is not None
                pending_at_backup[i] = op.pending_version_id
        engine_a.dispose()

        # --- Restore into a fresh data directory: the master key comes from the backup.
        dir_b = tmp_path / "b"
        queue_b = f"keyturn-b-{secrets.token_hex(4)}"
        env_b = _env(stack, dir_b, queue_b)
        code, out, err = await _keyturn(env_b, "restore", str(file))
        assert code == 0, err
        assert "13 credentials had an operation in flight" in out, out
        master_key = base64.b64decode((dir_b / "master.key").read_bytes())
        vault = Vault(master_key)
        engine_b = make_engine(f"sqlite:///{dir_b / 'keyturn.db'}")

        def current(credential_id: str) -> str:
            with Session(engine_b) as db:
                version = Vault.current(db, credential_id)
                assert version is not None
                return vault.reveal(version)

        with Session(engine_b) as db:
            flagged = {c.id for c in db.exec(select(Credential)) if c.needs_verify}
            for version in db.exec(select(SecretVersion)):
                vault.reveal(version)  # every secret decrypts with the restored key
        for i, cred in enumerate(creds):
            if cred["id"] not in flagged:
                assert i in COMMITTED
                assert await ssh_users.password_works(users[i], current(cred["id"]))
        assert flagged == {creds[i]["id"] for i in (*TARGET_CHANGED, *AT_PROMPT)}

        # --- Start Keyturn on it: a verify is requested for each flagged credential.
        worker_b = await _worker(env_b, tmp_path / "worker-b.log")

        def verifies() -> list[Operation]:
            with Session(engine_b) as db:
                return list(
                    db.exec(
                        select(Operation).where(
                            Operation.kind == "verify", Operation.trigger == "restore"
                        )
                    )
                )

        await _until(
            lambda: len(verifies()) == 13 and all(v.finished_at for v in verifies()),
            "13 verifies after the restore",
        )
        assert {v.status for v in verifies()} == {"succeeded"}, [
            (v.status, v.error, v.resolution) for v in verifies()
        ]
        with Session(engine_b) as db:
            for cred in creds:
                row = db.get(Credential, cred["id"])
                assert row is not None and row.sync_state == "in_sync" and not row.needs_verify
            for i in TARGET_CHANGED:  # the target had the interrupted change's secret: adopted
                adopted = db.get(SecretVersion, pending_at_backup[i])
                assert adopted is not None and adopted.state == SecretState.CURRENT
        for i, cred in enumerate(creds):
            secret = current(cred["id"])
            assert (secret == OLD) == (i in AT_PROMPT)
            assert await ssh_users.password_works(users[i], secret), i
        engine_b.dispose()
    finally:
        await api.aclose()
        await _stop(worker_a, signal.SIGKILL)
        if worker_b is not None:
            await _stop(worker_b, signal.SIGTERM)


async def _count_is(pattern: str, count: int) -> bool:
    return await _count(pattern) == count

"""``keyturn dev`` as a user runs it: starts everything, keeps data across restarts, stops cleanly.

Runs the real command in a subprocess on free ports, with its own data directory.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.starter.conftest import DevStack


def test_killing_keyturn_dev_leaves_no_temporal_server_behind(
    dev_env: dict[str, str], start_dev: type[DevStack]
) -> None:
    stack = start_dev(dev_env)
    port = int(dev_env["KEYTURN_TEMPORAL_ADDRESS"].rpartition(":")[2])
    stack.process.kill()  # SIGKILL: no cleanup of its own
    stack.process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _listening(port):  # the dev server follows its parent down
        assert time.monotonic() < deadline, "the Temporal dev server outlived keyturn dev"
        time.sleep(0.1)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_dev_stack_starts_persists_and_stops(
    dev_env: dict[str, str], start_dev: type[DevStack]
) -> None:
    api = f"http://127.0.0.1:{dev_env['KEYTURN_API_PORT']}"
    first = start_dev(dev_env)
    printed = "".join(first.output)
    token = (Path(dev_env["KEYTURN_DATA_DIR"]) / "admin.token").read_text().strip()
    assert token in printed and f"{api}/docs" in printed
    assert f":{dev_env['KEYTURN_TEMPORAL_UI_PORT']}" in printed
    headers = {"Authorization": f"Bearer {token}"}
    device = httpx.post(
        f"{api}/v1/devices",
        headers=headers,
        json={"name": "web-1", "address": "127.0.0.1", "port": 22, "trust_on_first_use": True},
    )
    assert device.status_code == 201, device.text
    assert httpx.get(f"{api}/docs").status_code == 200
    ui = httpx.get(f"http://127.0.0.1:{dev_env['KEYTURN_TEMPORAL_UI_PORT']}/")
    assert ui.status_code == 200
    # The Web UI is configured with Keyturn's codec, which answers it with the codec token.
    ui_settings = httpx.get(
        f"http://127.0.0.1:{dev_env['KEYTURN_TEMPORAL_UI_PORT']}/api/v1/settings"
    ).json()
    endpoint = ui_settings["Codec"]["Endpoint"]
    assert endpoint.startswith(f"{api}/codec/ui/") and token not in endpoint
    decoded = httpx.post(
        f"{endpoint}/decode",
        json={"payloads": []},
        headers={"Origin": f"http://127.0.0.1:{dev_env['KEYTURN_TEMPORAL_UI_PORT']}"},
    )
    assert decoded.status_code == 200 and decoded.json() == {"payloads": []}
    assert "access-control-allow-origin" in decoded.headers
    assert first.stop() == 0

    second = start_dev(dev_env)
    devices = httpx.get(f"{api}/v1/devices", headers=headers).json()["items"]
    assert [d["id"] for d in devices] == [device.json()["id"]]
    assert httpx.get(f"{api}/healthz").json() == {"status": "ok"}  # no token needed
    assert second.stop() == 0
    # The data directory and all in it (databases, their WAL files, key, token) are private.
    data_dir = Path(dev_env["KEYTURN_DATA_DIR"])
    assert data_dir.stat().st_mode & 0o777 == 0o700
    files = list(data_dir.rglob("*"))
    assert {"master.key", "admin.token", "keyturn.db", "temporal.db"} <= {f.name for f in files}
    shared = [f"{f.name} {f.stat().st_mode & 0o777:o}" for f in files if f.stat().st_mode & 0o077]
    assert not shared
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{api}/v1/devices", headers=headers)

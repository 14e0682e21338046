"""Keyturn reaches Temporal where Temporal's own configuration says: a profile of the config
file, or TEMPORAL_ADDRESS; the real dev server answers, and a profile that names another
address is followed there (and fails to connect, saying where)."""

from __future__ import annotations

import base64
import socket
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from keyturn.settings import Settings
from keyturn.temporal import connect


def _settings(temporal: WorkflowEnvironment, tmp_path: Path) -> Settings:
    key = base64.b64encode(temporal.master_key).decode()  # type: ignore[attr-defined]
    return Settings(data_dir=tmp_path, master_key=key, admin_token="t")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_profile_of_the_config_file_is_followed(
    temporal: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "temporal.toml"
    config.write_text(
        f'[profile.keyturn]\naddress = "{temporal.client.service_client.config.target_host}"\n'
        f'namespace = "{temporal.client.namespace}"\n\n'
        f'[profile.elsewhere]\naddress = "127.0.0.1:{_closed_port()}"\n'
    )
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(config))
    monkeypatch.delenv("TEMPORAL_ADDRESS", raising=False)
    monkeypatch.setenv("KEYTURN_TEMPORAL_PROFILE", "keyturn")

    client = await connect(_settings(temporal, tmp_path))
    assert await client.service_client.check_health()

    monkeypatch.setenv("KEYTURN_TEMPORAL_PROFILE", "elsewhere")
    elsewhere = _settings(temporal, tmp_path)
    with pytest.raises(RuntimeError, match=elsewhere.temporal["target_host"]):
        await connect(elsewhere)


async def test_temporal_address_is_followed(
    temporal: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(tmp_path / "none.toml"))
    monkeypatch.setenv("TEMPORAL_ADDRESS", temporal.client.service_client.config.target_host)
    client = await connect(_settings(temporal, tmp_path))
    assert await client.service_client.check_health()

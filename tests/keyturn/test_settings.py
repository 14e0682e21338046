"""Settings: KEYTURN_ variables, Temporal's own variables, the generated local files."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pydantic import ValidationError
from temporalio.service import TLSConfig

from keyturn.settings import Settings


def test_temporal_environment_variables_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.example:7233")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "pam")
    settings = Settings()
    assert (settings.temporal["target_host"], settings.temporal["namespace"]) == (
        "temporal.example:7233",
        "pam",
    )
    monkeypatch.setenv("KEYTURN_TEMPORAL_ADDRESS", "keyturn.example:7233")
    assert Settings().temporal["target_host"] == "keyturn.example:7233"  # Keyturn's own wins


PROFILES = """
[profile.default]
address = "default.example:7233"

[profile.prod]
address = "prod.example:7233"
namespace = "pam"
api_key = "prod-api-key"

[profile.prod.tls]
server_name = "temporal.prod.example"
server_ca_cert_path = "{ca}"
"""


def test_a_profile_of_temporal_s_config_file_is_honoured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    config = tmp_path / "temporal.toml"
    config.write_text(PROFILES.format(ca=ca))
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(config))
    assert Settings().temporal["target_host"] == "default.example:7233"  # the default profile

    monkeypatch.setenv("TEMPORAL_PROFILE", "prod")
    prod = Settings().temporal
    assert (prod["target_host"], prod["namespace"], prod["api_key"]) == (
        "prod.example:7233",
        "pam",
        "prod-api-key",
    )
    tls = prod["tls"]
    assert isinstance(tls, TLSConfig)  # the profile's certificates, read from their file
    assert (tls.domain, tls.server_root_ca_cert) == ("temporal.prod.example", ca.read_bytes())

    # KEYTURN_* on top: a profile chosen by Keyturn's variable, a namespace of its own.
    monkeypatch.delenv("TEMPORAL_PROFILE")
    monkeypatch.setenv("KEYTURN_TEMPORAL_PROFILE", "prod")
    monkeypatch.setenv("KEYTURN_TEMPORAL_NAMESPACE", "keyturn")
    ours = Settings().temporal
    assert (ours["target_host"], ours["namespace"]) == ("prod.example:7233", "keyturn")
    assert isinstance(ours["tls"], TLSConfig)
    monkeypatch.setenv("KEYTURN_TEMPORAL_TLS", "false")  # turned off explicitly: off
    assert Settings().temporal["tls"] is False


def test_an_api_key_implies_tls_unless_it_is_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ADDRESS", "NAMESPACE", "API_KEY", "PROFILE", "TLS"):
        monkeypatch.delenv(f"TEMPORAL_{name}", raising=False)
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", "/nonexistent/temporal.toml")
    assert Settings().temporal == {"target_host": "127.0.0.1:7233", "namespace": "default"}
    monkeypatch.setenv("KEYTURN_TEMPORAL_API_KEY", "cloud-key")
    cloud = Settings().temporal
    assert (cloud["api_key"], cloud["tls"]) == ("cloud-key", True)
    monkeypatch.setenv("KEYTURN_TEMPORAL_TLS", "0")
    assert Settings().temporal["tls"] is False
    monkeypatch.delenv("KEYTURN_TEMPORAL_API_KEY")
    monkeypatch.delenv("KEYTURN_TEMPORAL_TLS")
    monkeypatch.setenv("TEMPORAL_API_KEY", "from-temporal-s-variable")
    assert Settings().temporal["tls"] is True


def test_first_run_generates_a_private_master_key_and_token(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    with pytest.raises(FileNotFoundError, match="KEYTURN_MASTER_KEY"):
        _ = settings.master_key_bytes
    settings.ensure_local_files()
    key_file = tmp_path / "var" / "master.key"
    assert len(base64.b64decode(key_file.read_bytes())) == 32
    assert key_file.stat().st_mode & 0o777 == 0o600
    token = settings.resolved_admin_token
    Settings(data_dir=tmp_path / "var").ensure_local_files()  # a second run keeps both
    again = Settings(data_dir=tmp_path / "var")
    assert again.resolved_admin_token == token
    assert again.master_key_bytes == base64.b64decode(key_file.read_bytes())
    assert again.resolved_database_url == f"sqlite:///{(tmp_path / 'var' / 'keyturn.db')}"


def test_a_malformed_master_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        _ = Settings(master_key=base64.b64encode(b"short").decode()).master_key_bytes


def test_siem_destinations_are_read_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "KEYTURN_SIEM_DESTINATIONS",
        '[{"url": "tls://siem.example:6514", "format": "cef", "ca_file": "/etc/ca.pem"},'
        ' {"url": "udp://127.0.0.1:514"}]',
    )
    tls, udp = Settings().siem_destinations
    assert (tls.url, tls.format, str(tls.ca_file)) == (
        "tls://siem.example:6514",
        "cef",
        "/etc/ca.pem",
    )
    assert (udp.url, udp.format, udp.ca_file) == ("udp://127.0.0.1:514", "rfc5424", None)


@pytest.mark.parametrize(
    ("destination", "named"),
    [
        ('{"url": "http://siem:514"}', "scheme"),
        ('{"url": "tcp://siem"}', "port"),
        ('{"url": "tcp://siem:514", "format": "json"}', "format"),
        ('{"url": "tcp://siem:514", "colour": "red"}', "colour"),
    ],
)
def test_a_bad_siem_destination_is_refused(
    monkeypatch: pytest.MonkeyPatch, destination: str, named: str
) -> None:
    monkeypatch.setenv("KEYTURN_SIEM_DESTINATIONS", f"[{destination}]")
    with pytest.raises(ValueError, match=named):
        Settings()


@pytest.mark.parametrize("seconds", ["0.5", "601", "soon"])
def test_a_lost_worker_window_out_of_range_is_refused(
    monkeypatch: pytest.MonkeyPatch, seconds: str
) -> None:
    # Below a second, a busy worker's own steps would be taken for lost; above ten minutes, a
    # killed worker's would wait longer than most of a step's timeout.
    monkeypatch.setenv("KEYTURN_LOST_WORKER_SECONDS", seconds)
    with pytest.raises(ValueError, match="lost_worker_seconds"):
        Settings()
    monkeypatch.setenv("KEYTURN_LOST_WORKER_SECONDS", "4")
    assert Settings().lost_worker_seconds == 4.0


def test_the_webhook_secret_is_a_standard_webhooks_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    key = b"k" * 24
    monkeypatch.setenv("KEYTURN_WEBHOOK_SECRET", "whsec_" + base64.b64encode(key).decode())
    settings = Settings()
    assert settings.webhook_key == key
    assert "whsec" not in repr(settings)  # a SecretStr: never printed
    for bad, named in [("k" * 32, "whsec_"), ("whsec_@@@", "base64"), ("whsec_YWJj", "16 bytes")]:
        monkeypatch.setenv("KEYTURN_WEBHOOK_SECRET", bad)
        with pytest.raises(ValueError, match=named):
            Settings()


def test_the_data_directory_and_its_files_are_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "new" / "var")
    settings.ensure_local_files()
    assert (tmp_path / "new" / "var").stat().st_mode & 0o777 == 0o700
    for name in ("master.key", "admin.token", "keyturn.db"):
        assert (tmp_path / "new" / "var" / name).stat().st_mode & 0o777 == 0o600, name


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_master_key_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    settings = Settings(data_dir=tmp_path / "var")
    settings.ensure_local_files()
    key_file = tmp_path / "var" / "master.key"
    key_file.chmod(mode)
    with pytest.raises(PermissionError, match="chmod 600"):
        Settings(data_dir=tmp_path / "var").ensure_local_files()


def test_the_default_zone_on_the_main_queue_needs_the_default_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEYTURN_DEFAULT_ZONE_ON_MAIN_QUEUE", "true")
    assert Settings().zone_task_queue("default") == Settings().task_queue
    assert Settings().zone_task_queue("dmz") == f"{Settings().task_queue}-zone-dmz"
    monkeypatch.setenv("KEYTURN_ZONES", '["dmz"]')
    with pytest.raises(ValidationError, match="needs the default zone in KEYTURN_ZONES"):
        Settings()

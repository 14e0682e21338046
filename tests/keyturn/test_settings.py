"""Settings: KEYTURN_ variables, Temporal's own variables, the generated local files."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from keyturn.settings import Settings


def test_temporal_environment_variables_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.example:7233")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "pam")
    settings = Settings()
    assert (settings.temporal_address, settings.temporal_namespace) == (
        "temporal.example:7233",
        "pam",
    )
    monkeypatch.setenv("KEYTURN_TEMPORAL_ADDRESS", "keyturn.example:7233")
    assert Settings().temporal_address == "keyturn.example:7233"  # Keyturn's own wins


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

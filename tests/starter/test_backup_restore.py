"""``keyturn backup`` and ``keyturn restore`` on both store backends: what comes back, what the
file hides, and every refusal (which writes nothing). The run under load, with real sshd and
Temporal, is tests/e2e/test_backup_restore.py."""

from __future__ import annotations

import base64
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from starter.cli import main
from store.engine import make_engine, session_scope
from store.models import (
    AuditEvent,
    Credential,
    Device,
    LoginCharge,
    Operation,
    OperationStatus,
    SecretState,
    SecretVersion,
    SyncState,
)
from store.vault import Vault
from tests.e2e.leaks import forms
from tests.servers.postgresql import PostgresCluster

PG_DRIVER = "postgresql+psycopg"
PG_STORE = "<the session's PostgreSQL>"  # a parameter that stands for pg_cluster's URL
PASSPHRASE = "correct horse battery staple"
SECRET = "Backed-up-secret-1!"
PENDING = "Pending-when-backed-up-2!"


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextmanager
def _pg_databases(cluster: PostgresCluster) -> Iterator[tuple[str, str]]:
    """Two empty databases on the session's throwaway PostgreSQL cluster."""
    with cluster.new_databases(2) as (first, second):
        yield cluster.url(first, driver=PG_DRIVER), cluster.url(second, driver=PG_DRIVER)


@pytest.fixture
def databases(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[str, str]]:
    """The store backed up and the one restored into ("": the data dir's SQLite file)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'source.db'}", ""
        return
    with _pg_databases(request.getfixturevalue("pg_cluster")) as urls:
        yield urls


def _populate(engine: Engine, key: bytes) -> dict[str, str]:
    """A device, a credential with a current secret, and a change in flight (pending secret,
    a login charge reserved)."""
    vault = Vault(key)
    with session_scope(engine) as db:
        device = Device(name="web-1", address="127.0.0.1", port=22, executor="ssh")
        db.add(device)
        db.flush()
        credential = Credential(
            device_id=device.id,
            username="app",
            change_template="ssh/linux-passwd",
            verify_template="ssh/verify-login",
        )
        db.add(credential)
        db.flush()
        current = vault.add(db, credential.id, SECRET, SecretState.CURRENT)
        operation = Operation(
            credential_id=credential.id,
            kind="change",
            status=OperationStatus.RUNNING,
            workflow_id=f"keyturn-change-{credential.id}",
            gate_state="holding",
        )
        db.add(operation)
        db.flush()
        pending = vault.add(db, credential.id, PENDING, SecretState.PENDING, operation.id)
        operation.pending_version_id = pending.id
        db.add(LoginCharge(device_id=device.id, username="app"))
        return {
            "credential": credential.id,
            "current": current.id,
            "pending": pending.id,
            "operation": operation.id,
        }


def _keyturn(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str, **env: str
) -> tuple[int, str, str]:
    with monkeypatch.context() as m:
        for name, value in env.items():
            m.setenv(name, value)
        with pytest.raises(SystemExit) as exited:
            main(list(args))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_a_restore_brings_back_every_row_and_its_secrets_and_settles_what_was_in_flight(
    databases: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source_url, target_url = databases
    key = secrets.token_bytes(32)
    source = make_engine(source_url)
    ids = _populate(source, key)
    source.dispose()
    file = tmp_path / "keyturn.backup"

    code, out, err = _keyturn(
        monkeypatch,
        capsys,
        "backup",
        str(file),
        KEYTURN_DATABASE_URL=source_url,
        KEYTURN_MASTER_KEY=base64.b64encode(key).decode(),
        KEYTURN_BACKUP_PASSPHRASE=PASSPHRASE,
    )
    assert code == 0, err
    assert f"backup written to {file}" in out
    assert file.stat().st_mode & 0o777 == 0o600
    sealed = file.read_bytes()
    for hidden in (SECRET, PENDING, "web-1", base64.b64encode(key).decode()):
        assert not any(form in sealed for form in forms(hidden)), hidden

    data_dir = tmp_path / "restored"
    env = {"KEYTURN_DATA_DIR": str(data_dir), "KEYTURN_BACKUP_PASSPHRASE": PASSPHRASE}
    if target_url:
        env["KEYTURN_DATABASE_URL"] = target_url
    code, out, err = _keyturn(monkeypatch, capsys, "restore", str(file), **env)

    assert code == 0, err
    assert "1 devices, 1 credentials, 2 secretversions" in out
    assert "1 credentials had an operation in flight" in out
    restored_key = base64.b64decode((data_dir / "master.key").read_bytes())
    assert restored_key == key and (data_dir / "master.key").stat().st_mode & 0o777 == 0o600
    engine = make_engine(target_url or f"sqlite:///{data_dir / 'keyturn.db'}")
    vault = Vault(restored_key)
    with Session(engine) as db:
        current = db.get(SecretVersion, ids["current"])
        pending = db.get(SecretVersion, ids["pending"])
        assert current is not None and vault.reveal(current) == SECRET
        assert pending is not None and vault.reveal(pending) == PENDING
        assert pending.state == SecretState.PENDING  # kept: the verify on start tries it
        operation = db.get(Operation, ids["operation"])
        assert operation is not None and operation.status == OperationStatus.FAILED
        assert operation.error_type == "RestoredInFlight" and operation.gate_state is None
        credential = db.get(Credential, ids["credential"])
        assert credential is not None and credential.needs_verify
        assert credential.sync_state == SyncState.UNKNOWN
        assert [c.state for c in db.exec(select(LoginCharge))] == ["failed"]
        events = [e.event for e in db.exec(select(AuditEvent))]
        assert "operation.restored_in_flight" in events
    engine.dispose()


@pytest.fixture
def backup_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[Path, bytes]:
    """A backup of a small SQLite store, and its master key."""
    key = secrets.token_bytes(32)
    source = make_engine(f"sqlite:///{tmp_path / 'source.db'}")
    _populate(source, key)
    source.dispose()
    file = tmp_path / "keyturn.backup"
    code, _, err = _keyturn(
        monkeypatch,
        capsys,
        "backup",
        str(file),
        KEYTURN_DATABASE_URL=f"sqlite:///{tmp_path / 'source.db'}",
        KEYTURN_MASTER_KEY=base64.b64encode(key).decode(),
        KEYTURN_BACKUP_PASSPHRASE=PASSPHRASE,
    )
    assert code == 0, err
    return file, key


@pytest.mark.parametrize(
    ("env", "prepare", "says"),
    [
        ({"KEYTURN_BACKUP_PASSPHRASE": "wrong passphrase!!"}, None, "wrong passphrase"),
        ({"KEYTURN_BACKUP_PASSPHRASE": "short"}, None, "at least 12 characters"),
        ({}, "unrelated.txt", "is not empty"),
        ({"KEYTURN_MASTER_KEY": base64.b64encode(b"k" * 32).decode()}, None, "not the master key"),
        (
            {"KEYTURN_DATABASE_URL": PG_STORE},
            None,
            "backup is of a sqlite store",
        ),
    ],
)
def test_a_refused_restore_says_why_and_writes_nothing(
    backup_file: tuple[Path, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    env: dict[str, str],
    prepare: str | None,
    says: str,
) -> None:
    file, _ = backup_file
    if env.get("KEYTURN_DATABASE_URL") == PG_STORE:
        cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
        env = {**env, "KEYTURN_DATABASE_URL": cluster.url(driver=PG_DRIVER)}
    data_dir = tmp_path / "restored"
    if prepare:
        data_dir.mkdir()
        (data_dir / prepare).write_text("already here")
    before = sorted(p.name for p in data_dir.iterdir()) if data_dir.exists() else []

    code, out, err = _keyturn(
        monkeypatch,
        capsys,
        "restore",
        str(file),
        **{"KEYTURN_DATA_DIR": str(data_dir), "KEYTURN_BACKUP_PASSPHRASE": PASSPHRASE, **env},
    )

    assert code == 1 and out == ""
    assert err.startswith("keyturn restore: ") and says in err, err
    after = sorted(p.name for p in data_dir.iterdir()) if data_dir.exists() else []
    assert after == before


def test_a_restore_into_a_database_with_tables_is_refused(
    pg_cluster: PostgresCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    with _pg_databases(pg_cluster) as (source_url, _):
        make_engine(source_url).dispose()  # a Keyturn store: it has tables
        file = tmp_path / "pg.backup"
        env = {"KEYTURN_MASTER_KEY": key, "KEYTURN_BACKUP_PASSPHRASE": PASSPHRASE}
        code, _, err = _keyturn(
            monkeypatch, capsys, "backup", str(file), KEYTURN_DATABASE_URL=source_url, **env
        )
        assert code == 0, err
        data_dir = tmp_path / "restored"

        code, out, err = _keyturn(
            monkeypatch,
            capsys,
            "restore",
            str(file),
            KEYTURN_DATABASE_URL=source_url,
            KEYTURN_DATA_DIR=str(data_dir),
            **env,
        )

        assert code == 1 and out == ""
        assert "has tables" in err and "restore into an empty database" in err
        assert not data_dir.exists()


def test_a_backup_never_overwrites_a_file(
    backup_file: tuple[Path, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    file, key = backup_file
    before = file.read_bytes()
    code, out, err = _keyturn(
        monkeypatch,
        capsys,
        "backup",
        str(file),
        KEYTURN_DATABASE_URL=f"sqlite:///{tmp_path / 'source.db'}",
        KEYTURN_MASTER_KEY=base64.b64encode(key).decode(),
        KEYTURN_BACKUP_PASSPHRASE=PASSPHRASE,
    )
    assert code == 1 and "exists: choose a new file name" in err
    assert file.read_bytes() == before


@pytest.mark.parametrize(
    ("store", "passphrase", "says"),
    [
        ("missing.db", PASSPHRASE, "no store at"),
        ("empty.db", PASSPHRASE, "not a Keyturn store"),
        ("source.db", "short", "at least 12 characters"),
    ],
)
def test_a_refused_backup_says_why_and_writes_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    store: str,
    passphrase: str,
    says: str,
) -> None:
    key = secrets.token_bytes(32)
    make_engine(f"sqlite:///{tmp_path / 'source.db'}").dispose()
    sqlite3.connect(tmp_path / "empty.db").close()
    before = sorted(p.name for p in tmp_path.iterdir())

    code, out, err = _keyturn(
        monkeypatch,
        capsys,
        "backup",
        str(tmp_path / "keyturn.backup"),
        KEYTURN_DATABASE_URL=f"sqlite:///{tmp_path / store}",
        KEYTURN_MASTER_KEY=base64.b64encode(key).decode(),
        KEYTURN_BACKUP_PASSPHRASE=passphrase,
    )

    assert code == 1 and out == ""
    assert err.startswith("keyturn backup: ") and says in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_restore_of_a_missing_file_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _keyturn(
        monkeypatch,
        capsys,
        "restore",
        str(tmp_path / "nowhere.backup"),
        KEYTURN_DATA_DIR=str(tmp_path / "restored"),
        KEYTURN_BACKUP_PASSPHRASE=PASSPHRASE,
    )
    assert code == 1 and "nowhere.backup does not exist" in err
    assert not (tmp_path / "restored").exists()

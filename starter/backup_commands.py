"""``keyturn backup FILE`` and ``keyturn restore FILE``.

A backup is the store (a consistent snapshot taken while Keyturn runs) and the master key,
sealed with a passphrase (keyturn/backup_file.py). A restore goes into an empty data directory
(and, for PostgreSQL, an empty database): it loads the store, puts the master key in place,
migrates the schema if the backup is older, and settles what was in flight (store/restored.py):
the next start requests a verify for each credential concerned.
"""

from __future__ import annotations

import base64
import getpass
import os
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, func, text
from sqlmodel import Session, select

from keyturn.backup_file import (
    MIN_PASSPHRASE,
    BackupContents,
    BackupUnreadable,
    open_sealed,
    seal,
)
from keyturn.crypto import Cipher
from keyturn.settings import MASTER_KEY_FILE, Settings
from store import snapshot
from store.engine import make_engine
from store.models import AuditEvent, Credential, Device, SecretVersion
from store.restored import settle_in_flight

PASSPHRASE_ENV = "KEYTURN_BACKUP_PASSPHRASE"


class CommandFailed(Exception):
    """Printed as ``keyturn <command>: <message>``; exit status 1."""


def backup(settings: Settings, file: Path) -> str:
    """Write the backup; a line that says what was written."""
    if file.exists():
        raise CommandFailed(f"{file} exists: choose a new file name")
    passphrase = _passphrase(confirm=True)
    url = settings.resolved_database_url
    dialect = snapshot.dialect_of(url)
    master_key = settings.master_key_bytes
    taken = snapshot.take(url)
    version = _schema_version(url, dialect, taken)
    sealed = seal(
        BackupContents(dialect, taken, master_key, version, datetime.now(UTC).isoformat()),
        passphrase,
    )
    partial = file.with_name(f".{file.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(sealed)
        handle.flush()
        os.fsync(handle.fileno())
    partial.rename(file)  # never a half-written backup under the final name
    return (
        f"backup written to {file}: {dialect} store (schema v{version}, {len(taken)} bytes) "
        f"and master key {_key_id(master_key)}"
    )


def restore(settings: Settings, file: Path) -> str:
    """Restore into the empty data directory; a summary of what came back."""
    if settings.data_dir.exists() and any(settings.data_dir.iterdir()):
        raise CommandFailed(
            f"{settings.data_dir} is not empty: restore into an empty data directory "
            "(KEYTURN_DATA_DIR)"
        )
    if not file.exists():
        raise CommandFailed(f"{file} does not exist")
    try:
        contents = open_sealed(file.read_bytes(), _passphrase(confirm=False))
    except BackupUnreadable as exc:
        raise CommandFailed(str(exc)) from None
    key_path = settings.master_key_file or settings.data_dir / MASTER_KEY_FILE
    if settings.master_key:
        if settings.master_key_bytes != contents.master_key:
            raise CommandFailed(
                "KEYTURN_MASTER_KEY is not the master key of this backup "
                f"({_key_id(contents.master_key)}): unset it, and the backup's key is written "
                f"to {key_path}"
            )
    elif key_path.exists():
        raise CommandFailed(f"{key_path} exists: restore with no master key in place")
    url = settings.resolved_database_url
    snapshot.load(url, contents.dialect, contents.snapshot)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not settings.master_key:
        key_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(base64.b64encode(contents.master_key))
    engine = make_engine(url)  # migrates a backup of an older release
    try:
        flagged = settle_in_flight(engine)
        with Session(engine) as db:
            counts = {
                model.__name__.lower() + "s": db.exec(select(func.count()).select_from(model)).one()
                for model in (Device, Credential, SecretVersion, AuditEvent)
            }
    finally:
        engine.dispose()
    summary = ", ".join(f"{n} {name}" for name, n in counts.items())
    return (
        f"restored the backup of {contents.created_at} into {settings.data_dir}: {summary}; "
        f"{len(flagged)} credentials had an operation in flight and will be verified on start"
    )


def _passphrase(*, confirm: bool) -> str:
    passphrase = os.environ.get(PASSPHRASE_ENV)
    if passphrase is None:
        if not sys.stdin.isatty():
            raise CommandFailed(f"set {PASSPHRASE_ENV}, or run in a terminal to be asked")
        passphrase = getpass.getpass("Backup passphrase: ")
        if confirm and getpass.getpass("Again: ") != passphrase:
            raise CommandFailed("the passphrases differ")
    if len(passphrase) < MIN_PASSPHRASE:
        raise CommandFailed(f"the passphrase must be at least {MIN_PASSPHRASE} characters long")
    return passphrase


def _schema_version(url: str, dialect: str, taken: bytes) -> int:
    """The schema version of the snapshot (SQLite: read from the copy itself), which also
    proves the store is Keyturn's."""
    try:
        if dialect == "sqlite":
            copy = sqlite3.connect(":memory:")
            try:
                copy.deserialize(taken)
                return int(copy.execute("SELECT version FROM schemaversion").fetchone()[0])
            finally:
                copy.close()
        engine = create_engine(url)  # no migration: a backup changes nothing
        try:
            with engine.connect() as conn:
                return int(conn.execute(text("SELECT version FROM schemaversion")).scalar_one())
        finally:
            engine.dispose()
    except Exception as exc:
        raise CommandFailed(f"not a Keyturn store (no schema version): {exc}") from None


def _key_id(master_key: bytes) -> str:
    return Cipher(master_key, "secrets").key_id

"""A consistent snapshot of the store while Keyturn runs, and loading one into an empty store.

SQLite: the online backup API copies the database page by page under one read transaction, so
writers carry on (WAL) and the copy is a single point in time. PostgreSQL: ``pg_dump`` takes its
snapshot in one repeatable-read transaction; ``pg_restore`` loads it. Passwords in the URL go to
the tools through ``PGPASSWORD``, never on a command line.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import URL, make_url


class SnapshotFailed(Exception):
    """The snapshot could not be taken or loaded; the message says why."""


def dialect_of(database_url: str) -> str:
    name = make_url(database_url).get_backend_name()
    if name not in ("sqlite", "postgresql"):
        raise SnapshotFailed(f"backups support SQLite and PostgreSQL stores, not {name}")
    return name


def take(database_url: str) -> bytes:
    """The store's bytes: a SQLite database file, or a pg_dump archive (custom format)."""
    if dialect_of(database_url) == "sqlite":
        return _sqlite_snapshot(_sqlite_path(database_url))
    return _run(["pg_dump", "--format=custom", "--no-owner", "--no-privileges"], database_url)


def load(database_url: str, dialect: str, snapshot: bytes) -> None:
    """Load a snapshot into an empty store of the same kind (refused otherwise)."""
    target = dialect_of(database_url)
    if target != dialect:
        raise SnapshotFailed(
            f"the backup is of a {dialect} store; set KEYTURN_DATABASE_URL to a {dialect} "
            f"database to restore it (it is {target})"
        )
    if target == "sqlite":
        path = _sqlite_path(database_url)
        if path.exists():
            raise SnapshotFailed(f"{path} exists: restore into an empty data directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(snapshot)
        return
    engine = create_engine(database_url)
    try:
        tables = inspect(engine).get_table_names()
    finally:
        engine.dispose()
    if tables:
        raise SnapshotFailed(
            f"database {make_url(database_url).database!r} has tables ({', '.join(tables[:5])}"
            f"{', …' if len(tables) > 5 else ''}): restore into an empty database"
        )
    _run(["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error"], database_url, snapshot)


def _sqlite_path(database_url: str) -> Path:
    database = make_url(database_url).database
    if not database or database == ":memory:":
        raise SnapshotFailed("an in-memory SQLite store cannot be backed up or restored")
    return Path(database)


def _sqlite_snapshot(path: Path) -> bytes:
    if not path.exists():
        raise SnapshotFailed(f"no store at {path}: is KEYTURN_DATA_DIR (or _DATABASE_URL) right?")
    source = sqlite3.connect(path, timeout=30)  # the path exists: nothing is created
    copy = sqlite3.connect(":memory:")
    try:
        source.backup(copy)  # all pages in one step: one read transaction, one point in time
        image = bytearray(copy.serialize())
    finally:
        copy.close()
        source.close()
    # The copy keeps the source's header, which says WAL (file format bytes 18-19 = 2); every
    # page is in the image and there is no WAL to go with it, so mark it a rollback-journal
    # database (1, 1): it then opens on its own, in memory or as a file, and Keyturn switches
    # the restored store to WAL when it first opens it.
    image[18:20] = b"\x01\x01"
    return bytes(image)


def _run(command: list[str], database_url: str, stdin: bytes | None = None) -> bytes:
    tool = shutil.which(command[0])
    if tool is None:
        raise SnapshotFailed(f"{command[0]} is not installed (PostgreSQL's client tools)")
    url = make_url(database_url)
    env = {**os.environ}
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    done = subprocess.run(
        [tool, *command[1:], f"--dbname={_libpq_url(url)}"],
        input=stdin,
        capture_output=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise SnapshotFailed(
            f"{command[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')}"
        )
    return done.stdout


def _libpq_url(url: URL) -> str:
    """The URL libpq understands: no SQLAlchemy driver suffix, no password."""
    plain = url.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False)

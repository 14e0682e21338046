"""The SQLite store's durability settings hold on every connection the pool opens."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from sqlalchemy import text

from store.engine import make_engine

SYNCHRONOUS_FULL = 2  # PRAGMA synchronous answers 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


def test_every_sqlite_connection_syncs_each_commit(tmp_path: Path) -> None:
    """synchronous=FULL, so a committed secret survives a power loss: asked on several
    connections held at once (the pool opens each anew), not only the first."""
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        with ExitStack() as held:
            connections = [held.enter_context(engine.connect()) for _ in range(5)]
            settings = [
                (
                    c.execute(text("PRAGMA synchronous")).scalar_one(),
                    c.execute(text("PRAGMA journal_mode")).scalar_one(),
                )
                for c in connections
            ]
        assert settings == [(SYNCHRONOUS_FULL, "wal")] * 5
    finally:
        engine.dispose()

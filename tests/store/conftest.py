"""The store's backends: SQLite (the default) and PostgreSQL (the session's throwaway cluster)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from store.engine import make_engine
from tests.servers.postgresql import PostgresCluster


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database with nothing in it, on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")  # not for SQLite alone
    with cluster.new_databases() as (name,):
        yield cluster.url(name, driver="postgresql+psycopg")


@pytest.fixture
def engine(empty_database: str) -> Iterator[Engine]:
    """A new, migrated store on each backend."""
    engine = make_engine(empty_database)
    try:
        yield engine
    finally:
        engine.dispose()

"""Alembic's entry point. Keyturn runs it from ``store.migrations.migrate`` on a connection
it already holds (under its own lock and transaction), so there is no URL to read here."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection


def run() -> None:
    connection: Connection = context.config.attributes["connection"]
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


# Alembic runs this file inside a migration context; a plain import (a tool walking the
# package) finds none and does nothing.
if getattr(context, "config", None) is not None:
    run()

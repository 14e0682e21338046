"""Schema version 1: baseline."""

from __future__ import annotations

revision = "0001"
down_revision = None


def upgrade() -> None:
    """Nothing to run: a store this old is the v1 schema, and create_all made what it lacks."""

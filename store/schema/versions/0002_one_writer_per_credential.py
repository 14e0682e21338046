"""Schema version 2: one writer per credential."""

from __future__ import annotations

from alembic import op

from store.migrations import STEPS

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    STEPS[0](op.get_bind())

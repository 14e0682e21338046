"""Schema version 3: triggers."""

from __future__ import annotations

from alembic import op

from store.migrations import STEPS

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    STEPS[1](op.get_bind())

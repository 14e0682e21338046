"""Schema version 4: recovery by hand."""

from __future__ import annotations

from alembic import op

from store.migrations import STEPS

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    STEPS[2](op.get_bind())

"""Schema version 5: governance."""

from __future__ import annotations

from alembic import op

from store.migrations import STEPS

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    STEPS[3](op.get_bind())

"""Schema version 9: SSH keys as secrets."""

from __future__ import annotations

from alembic import op

from store.migrations import STEPS

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    STEPS[7](op.get_bind())

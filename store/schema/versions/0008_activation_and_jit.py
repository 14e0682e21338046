"""Schema version 8: activation, inactivation and just-in-time accounts."""

from __future__ import annotations

from alembic import op

from store.migrations import STEPS

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    STEPS[6](op.get_bind())

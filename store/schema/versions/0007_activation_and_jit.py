"""Schema version 7: activation, inactivation and just-in-time accounts."""

from __future__ import annotations

from alembic import op

from store.migrations import STEPS

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    STEPS[5](op.get_bind())

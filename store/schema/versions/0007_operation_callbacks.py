"""Schema version 7: every request's callback URL registered on its operation."""

from __future__ import annotations

from alembic import op

from store.migrations import STEPS

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    STEPS[5](op.get_bind())

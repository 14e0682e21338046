"""Schema version 9: principals and template review (planned as step 10; renumbered at merge)."""

from __future__ import annotations

from alembic import op

from store.migrations import STEPS

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    STEPS[7](op.get_bind())

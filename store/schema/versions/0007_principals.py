"""Schema version 7: principals and template review (planned as step 10; renumbered at merge)."""

from __future__ import annotations

from alembic import op

from store.migrations import STEPS

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    STEPS[5](op.get_bind())

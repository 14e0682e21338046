"""Schema version 10: principals and template review (maker-checker)."""

from __future__ import annotations

from alembic import op

from store.migrations import STEPS

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    STEPS[8](op.get_bind())

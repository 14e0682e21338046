"""Schema version 11: the task manager (tasks, task runs, task results)."""

from __future__ import annotations

from alembic import op

from store.migrations import STEPS

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    STEPS[9](op.get_bind())

"""Schema version 6: allow insecure transport."""

from __future__ import annotations

from alembic import op

from store.migrations import STEPS

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    STEPS[4](op.get_bind())

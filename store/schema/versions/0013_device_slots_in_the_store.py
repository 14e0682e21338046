"""Schema version 13: device slots claimed in the store."""

from __future__ import annotations

from alembic import op

from store.migrations import STEPS, step_named

revision = "0013"
down_revision = "0012"


def upgrade() -> None:
    STEPS[step_named("_v13_device_slots_in_the_store")](op.get_bind())

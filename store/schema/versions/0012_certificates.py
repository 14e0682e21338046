"""Schema version 12: certificates, their CAs, and operations that act on a certificate."""

from __future__ import annotations

from alembic import op

from store.migrations import STEPS, step_named

revision = "0012"
down_revision = "0011"


def upgrade() -> None:
    STEPS[step_named("_v12_certificates")](op.get_bind())

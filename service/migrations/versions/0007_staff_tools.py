"""staff tools: who changed a case from which tool, and signed status reports seen once

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("case_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("actor", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("via", sa.String(length=64), nullable=True))
    op.create_table(
        "tool_status_receipts",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("case_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "message_id", name=op.f("pk_tool_status_receipts")),
    )


def downgrade() -> None:
    op.drop_table("tool_status_receipts")
    with op.batch_alter_table("case_events", schema=None) as batch_op:
        batch_op.drop_column("via")
        batch_op.drop_column("actor")

"""api: job requests a worker claims, destinations' circuit states

Revision ID: 0014
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0014"
down_revision = "0011"
branch_labels = None
depends_on = None

SerialId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "job_requests",
        sa.Column("id", SerialId, autoincrement=True, nullable=False),
        sa.Column("job", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=True),
        sa.Column("claim_token", sa.String(length=36), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=255), nullable=True),
        sa.Column("result", Json, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_requests")),
    )
    with op.batch_alter_table("job_requests", schema=None) as batch_op:
        for name, state in (("waiting", "requested"), ("running", "running")):
            batch_op.create_index(
                f"uq_job_requests_{name}",
                ["job"],
                unique=True,
                sqlite_where=sa.text(f"state = '{state}'"),
                postgresql_where=sa.text(f"state = '{state}'"),
            )
    op.create_table(
        "target_health",
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("open_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("target", name=op.f("pk_target_health")),
    )


def downgrade() -> None:
    op.drop_table("target_health")
    with op.batch_alter_table("job_requests", schema=None) as batch_op:
        batch_op.drop_index("uq_job_requests_running")
        batch_op.drop_index("uq_job_requests_waiting")
    op.drop_table("job_requests")

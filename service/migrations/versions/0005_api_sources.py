"""api sources: the source's record id on every canonical row; resolved quarantine rows

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 18:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Every source-keyed canonical table (models.SourceRow).
SOURCE_TABLES = (
    "schools", "academic_sessions", "courses", "classes", "students", "contacts",
    "student_contacts", "user_roles", "enrollments", "line_items", "grades", "calendar_days",
    "attendance_events", "discipline_incidents", "discipline_reports",
)  # fmt: skip


def upgrade() -> None:
    for name in SOURCE_TABLES:
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.add_column(sa.Column("resource_id", sa.String(length=64), nullable=True))
            batch_op.create_index(batch_op.f(f"ix_{name}_resource_id"), ["resource_id"])
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.add_column(sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.drop_column("resolved_at")
    for name in reversed(SOURCE_TABLES):
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{name}_resource_id"))
            batch_op.drop_column("resource_id")

"""data trust (files): unknown indicators, phone issues, subject codes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

- student_indicators: attendance values may be NULL (unknown, never a perfect 1.0), and
  `attendance_unknown` says why.
- contacts.phone_issue: why a phone field gave no usable number.
- courses.subject_codes, classes.subject_codes: core subjects may be matched by code.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

NULLABLE = (
    ("enrolled_days", sa.Float()),
    ("absent_days", sa.Float()),
    ("unexcused_absent_days", sa.Float()),
    ("excused_absent_days", sa.Float()),
    ("suspension_absent_days", sa.Float()),
    ("absence_rate", sa.Float()),
    ("attendance_rate", sa.Float()),
    ("unexcused_absence_rate", sa.Float()),
    ("chronically_absent", sa.Boolean()),
    ("approaching_chronic_absence", sa.Boolean()),
)


def upgrade() -> None:
    with op.batch_alter_table("student_indicators", schema=None) as batch_op:
        for name, type_ in NULLABLE:
            batch_op.alter_column(name, existing_type=type_, nullable=True)
        batch_op.add_column(sa.Column("attendance_unknown", sa.String(length=32), nullable=True))
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("phone_issue", sa.String(length=64), nullable=True))
    with op.batch_alter_table("courses", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject_codes", sa.String(length=255), nullable=True))
    with op.batch_alter_table("classes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("subject_codes", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("classes", schema=None) as batch_op:
        batch_op.drop_column("subject_codes")
    with op.batch_alter_table("courses", schema=None) as batch_op:
        batch_op.drop_column("subject_codes")
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_column("phone_issue")
    # Unknown values have no number to become: the derived table is recomputed by evaluate.
    op.execute("DELETE FROM student_indicators")
    with op.batch_alter_table("student_indicators", schema=None) as batch_op:
        batch_op.drop_column("attendance_unknown")
        for name, type_ in NULLABLE:
            batch_op.alter_column(name, existing_type=type_, nullable=False)

"""retention and the disclosure log: disclosures outlive the outbox rows and cases they came
from; a purged quarantine payload says when it was purged

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

SerialId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # 34 CFR 99.32: the record of disclosures is kept as long as the education record. A closed
    # case purged by retention takes its outbox rows with it, so the disclosure no longer
    # depends on them: no foreign key, and the case and purpose are kept on the row itself.
    with op.batch_alter_table("disclosures", schema=None) as batch_op:
        batch_op.drop_constraint("fk_disclosures_outbox_id_outbox", type_="foreignkey")
        batch_op.add_column(sa.Column("case_id", SerialId, nullable=True))
        batch_op.add_column(sa.Column("purpose", sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f("ix_disclosures_case_id"), ["case_id"], unique=False)
    op.execute(
        "UPDATE disclosures SET "
        "case_id = (SELECT outbox.case_id FROM outbox WHERE outbox.id = disclosures.outbox_id), "
        "purpose = (SELECT outbox.kind FROM outbox WHERE outbox.id = disclosures.outbox_id) "
        "WHERE outbox_id IS NOT NULL"
    )
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("payload_purged_at", sa.DateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("resource_quarantine", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("payload_purged_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("resource_quarantine", schema=None) as batch_op:
        batch_op.drop_column("payload_purged_at")
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.drop_column("payload_purged_at")
    with op.batch_alter_table("disclosures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_disclosures_case_id"))
        batch_op.drop_column("purpose")
        batch_op.drop_column("case_id")
        batch_op.create_foreign_key(
            "fk_disclosures_outbox_id_outbox", "outbox", ["outbox_id"], ["id"]
        )

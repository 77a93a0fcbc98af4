"""delivery core: outbox intents, fenced claims, delivery links, all-channel opt-out

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reason", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("claim_token", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("result", Json, nullable=True))
        batch_op.add_column(sa.Column("sending_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_outbox_contact_id"), ["contact_id"], unique=False)
    with op.batch_alter_table("contact_preferences", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("all_opted_out_at", sa.DateTime(timezone=True), nullable=True)
        )
    op.create_table(
        "delivery_links",
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("case_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("external_id", sa.String(length=255), nullable=False),
        sa.Column("version", sa.String(length=255), nullable=True),
        sa.Column("last_revision", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_delivery_links_case_id_cases")
        ),
        sa.PrimaryKeyConstraint("target", "subject", name=op.f("pk_delivery_links")),
    )
    with op.batch_alter_table("delivery_links", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_delivery_links_case_id"), ["case_id"], unique=False)
    _pending_items_become_intents()


def _pending_items_become_intents() -> None:
    """Items queued by an older casebridge held rendered text; keep what they meant."""
    conn = op.get_bind()
    outbox = sa.table(
        "outbox",
        sa.column("id", sa.Integer),
        sa.column("kind", sa.String),
        sa.column("target", sa.String),
        sa.column("status", sa.String),
        sa.column("payload", Json),
    )
    rows = conn.execute(
        sa.select(outbox.c.id, outbox.c.kind, outbox.c.payload).where(outbox.c.status == "pending")
    ).all()
    for item_id, kind, payload in rows:
        data: dict[str, Any] = payload if isinstance(payload, dict) else json.loads(payload)
        if kind == "task":
            values = {
                "kind": "task_upsert",
                "payload": {"case_id": data.get("case_id"), "revision": data.get("revision")},
            }
        elif kind == "family_message":
            values = {
                "kind": "family_notice",
                "target": "family",
                "payload": {"categories": [], "resource_ids": data.get("resource_ids") or []},
            }
        else:
            continue
        conn.execute(sa.update(outbox).where(outbox.c.id == item_id).values(**values))
    # Delivered items keep their history under the new kind names.
    conn.execute(sa.update(outbox).where(outbox.c.kind == "task").values(kind="task_upsert"))
    conn.execute(
        sa.update(outbox).where(outbox.c.kind == "family_message").values(kind="family_notice")
    )


def downgrade() -> None:
    with op.batch_alter_table("delivery_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_delivery_links_case_id"))
    op.drop_table("delivery_links")
    with op.batch_alter_table("contact_preferences", schema=None) as batch_op:
        batch_op.drop_column("all_opted_out_at")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_contact_id"))
        batch_op.drop_column("sending_at")
        batch_op.drop_column("result")
        batch_op.drop_column("claim_token")
        batch_op.drop_column("reason")

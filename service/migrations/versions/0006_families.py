"""families: consent history, inbound texts, provider message states, send-rate slots,
numbers the SMS provider rejected

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")
SerialId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("contact_preferences", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sms_unusable_phone", sa.String(length=32), nullable=True))
    op.create_table(
        "consent_events",
        sa.Column("id", SerialId, autoincrement=True, nullable=False),
        sa.Column("contact_id", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("via", sa.String(length=32), nullable=False),
        sa.Column("evidence", Json, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_events")),
    )
    with op.batch_alter_table("consent_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_consent_events_contact_id"), ["contact_id"])
    op.create_table(
        "inbound_messages",
        sa.Column("provider_id", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("from_address", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("contact_ids", Json, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("provider_id", name=op.f("pk_inbound_messages")),
    )
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_inbound_messages_from_address"), ["from_address"])
    op.create_table(
        "message_statuses",
        sa.Column("provider_id", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(length=16), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("provider_id", name=op.f("pk_message_statuses")),
    )
    op.create_table(
        "send_rates",
        sa.Column("sender", sa.String(length=128), nullable=False),
        sa.Column("next_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("sender", name=op.f("pk_send_rates")),
    )
    op.create_table(
        "community_resources",
        sa.Column("resource_id", sa.String(length=128), nullable=False),
        sa.Column("directory", sa.String(length=64), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("organization", sa.String(length=255), nullable=True),
        sa.Column("phone", sa.String(length=32), nullable=True),
        sa.Column("url", sa.String(length=512), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("languages", Json, nullable=False),
        sa.Column("minimum_age", sa.Float(), nullable=True),
        sa.Column("maximum_age", sa.Float(), nullable=True),
        sa.Column("latitude", sa.Float(), nullable=True),
        sa.Column("longitude", sa.Float(), nullable=True),
        sa.Column("assured_date", sa.Date(), nullable=True),
        sa.Column("notes", Json, nullable=False),
        sa.Column("content_hash", sa.String(length=32), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("resource_id", name=op.f("pk_community_resources")),
    )
    with op.batch_alter_table("community_resources", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_community_resources_directory"), ["directory"])
    op.create_table(
        "resource_quarantine",
        sa.Column("id", SerialId, autoincrement=True, nullable=False),
        sa.Column("directory", sa.String(length=64), nullable=False),
        sa.Column("record_id", sa.String(length=255), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("payload", Json, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resource_quarantine")),
    )
    with op.batch_alter_table("resource_quarantine", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_resource_quarantine_directory"), ["directory"])
    op.create_table(
        "case_replies",
        sa.Column("id", SerialId, autoincrement=True, nullable=False),
        sa.Column("case_id", SerialId, nullable=True),
        sa.Column("contact_id", sa.String(length=128), nullable=False),
        sa.Column("outbox_id", SerialId, nullable=True),
        sa.Column("answer", sa.String(length=16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("message_sid", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_case_replies_case_id_cases")
        ),
        sa.ForeignKeyConstraint(
            ["outbox_id"], ["outbox.id"], name=op.f("fk_case_replies_outbox_id_outbox")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_case_replies")),
    )
    with op.batch_alter_table("case_replies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_case_replies_case_id"), ["case_id"])
    op.create_table(
        "resource_links",
        sa.Column("token", sa.String(length=32), nullable=False),
        sa.Column("resource_ids", Json, nullable=False),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token", name=op.f("pk_resource_links")),
    )


def downgrade() -> None:
    op.drop_table("resource_links")
    op.drop_table("case_replies")
    op.drop_table("resource_quarantine")
    op.drop_table("community_resources")
    op.drop_table("send_rates")
    op.drop_table("message_statuses")
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbound_messages_from_address"))
    op.drop_table("inbound_messages")
    with op.batch_alter_table("consent_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consent_events_contact_id"))
    op.drop_table("consent_events")
    with op.batch_alter_table("contact_preferences", schema=None) as batch_op:
        batch_op.drop_column("sms_unusable_phone")

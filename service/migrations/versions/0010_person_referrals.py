"""person-based referrals: the referral as sent, its status tokens (hashed), birth dates to
match students on

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SerialId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Key = sa.String(length=128)


def upgrade() -> None:
    op.create_table(
        "student_demographics",
        sa.Column("student_id", Key, nullable=False),
        sa.Column("birth_date", sa.Date(), nullable=True),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("row_hash", sa.BigInteger(), nullable=False),
        sa.Column("src_chunk", sa.BigInteger(), nullable=True),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("student_id", name=op.f("pk_student_demographics")),
    )
    op.create_index(
        op.f("ix_student_demographics_birth_date"), "student_demographics", ["birth_date"]
    )
    op.create_index(
        op.f("ix_student_demographics_resource_id"), "student_demographics", ["resource_id"]
    )
    op.create_table(
        "person_referrals",
        sa.Column("id", SerialId, autoincrement=True, nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_on", sa.Date(), nullable=False),
        sa.Column("token_id", SerialId, nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("referrer_name", sa.String(length=255), nullable=False),
        sa.Column("referrer_role", sa.String(length=32), nullable=False),
        sa.Column("referrer_email", sa.String(length=255), nullable=True),
        sa.Column("relationship", sa.String(length=128), nullable=False),
        sa.Column("concerns", Json, nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("urgency", sa.String(length=16), nullable=False),
        sa.Column("family_contact_ok", sa.Boolean(), nullable=False),
        sa.Column("identification", Json, nullable=False),
        sa.Column("school_id", Key, nullable=True),
        sa.Column("match", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("student_id", Key, nullable=True),
        sa.Column("case_id", SerialId, nullable=True),
        sa.Column("referral_id", SerialId, nullable=True),
        sa.Column("rejection_reason", sa.String(length=32), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(length=128), nullable=True),
        sa.Column("referrer_status", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_person_referrals_case_id_cases")
        ),
        sa.ForeignKeyConstraint(
            ["referral_id"],
            ["referrals.id"],
            name=op.f("fk_person_referrals_referral_id_referrals"),
        ),
        sa.ForeignKeyConstraint(
            ["token_id"], ["api_tokens.id"], name=op.f("fk_person_referrals_token_id_api_tokens")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_person_referrals")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_person_referrals_fingerprint")),
        sa.UniqueConstraint("public_id", name=op.f("uq_person_referrals_public_id")),
    )
    for column in ("case_id", "school_id", "state", "student_id"):
        op.create_index(op.f(f"ix_person_referrals_{column}"), "person_referrals", [column])
    op.create_index(
        "uq_person_referrals_token_key",
        "person_referrals",
        ["token_id", "idempotency_key"],
        unique=True,
    )
    op.create_table(
        "referral_status_tokens",
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("person_referral_id", SerialId, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_referral_id"],
            ["person_referrals.id"],
            name=op.f("fk_referral_status_tokens_person_referral_id_person_referrals"),
        ),
        sa.PrimaryKeyConstraint("token_sha256", name=op.f("pk_referral_status_tokens")),
    )
    op.create_index(
        op.f("ix_referral_status_tokens_person_referral_id"),
        "referral_status_tokens",
        ["person_referral_id"],
    )


def downgrade() -> None:
    op.drop_table("referral_status_tokens")
    op.drop_table("person_referrals")
    op.drop_table("student_demographics")

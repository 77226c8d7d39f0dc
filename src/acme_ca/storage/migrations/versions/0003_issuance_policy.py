"""Issuance policy: EAB keys, rate-limit counters, pending-authz index.

Revision ID: 0003_issuance_policy
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_issuance_policy"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eab_keys",
        sa.Column("kid", sa.String(length=128), nullable=False),
        sa.Column("hmac_key", sa.LargeBinary(), nullable=False),
        sa.Column("label", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.Column("account_id", sa.String(length=32), nullable=True),
        sa.Column("bind_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("kid"),
    )
    op.create_table(
        "rate_counters",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", "key", "bucket"),
    )
    op.create_index("ix_authzs_account_status", "authzs", ["account_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_authzs_account_status", table_name="authzs")
    op.drop_table("rate_counters")
    op.drop_table("eab_keys")

"""Initial schema.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "accounts",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("jwk", sa.Text(), nullable=False),
        sa.Column("thumbprint", sa.String(length=64), nullable=False),
        sa.Column("contact", sa.Text(), nullable=False),
        sa.Column("tos_agreed", sa.Boolean(), nullable=False),
        sa.Column("eab_kid", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("thumbprint"),
    )
    op.create_table(
        "authzs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("identifier_type", sa.String(length=8), nullable=False),
        sa.Column("identifier_value", sa.String(length=255), nullable=False),
        sa.Column("wildcard", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expires", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_authzs_reuse",
        "authzs",
        ["account_id", "identifier_type", "identifier_value", "status"],
        unique=False,
    )
    op.create_table(
        "certificates",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("order_id", sa.String(length=32), nullable=False),
        sa.Column("identifiers", sa.Text(), nullable=False),
        sa.Column("pem_chains", sa.Text(), nullable=False),
        sa.Column("spki_sha256", sa.String(length=64), nullable=False),
        sa.Column("not_before", sa.BigInteger(), nullable=False),
        sa.Column("not_after", sa.BigInteger(), nullable=False),
        sa.Column("issued_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.Column("revocation_reason", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("order_id"),
        sa.UniqueConstraint("serial"),
    )
    op.create_index("ix_certificates_account", "certificates", ["account_id"], unique=False)
    op.create_index("ix_certificates_spki", "certificates", ["spki_sha256"], unique=False)
    op.create_table(
        "challenges",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("authz_id", sa.String(length=32), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("validated", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("validation_record", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_challenges_authz", "challenges", ["authz_id"], unique=False)
    op.create_table(
        "jobs",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("target_id", sa.String(length=32), nullable=False),
        sa.Column("lease_until", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "target_id"),
    )
    op.create_index("ix_jobs_lease", "jobs", ["lease_until"], unique=False)
    op.create_table(
        "order_authzs",
        sa.Column("order_id", sa.String(length=32), nullable=False),
        sa.Column("authz_id", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("order_id", "authz_id"),
    )
    op.create_index("ix_order_authzs_authz", "order_authzs", ["authz_id"], unique=False)
    op.create_table(
        "orders",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("identifiers", sa.Text(), nullable=False),
        sa.Column("authz_ids", sa.Text(), nullable=False),
        sa.Column("expires", sa.BigInteger(), nullable=False),
        sa.Column("not_before", sa.BigInteger(), nullable=True),
        sa.Column("not_after", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("certificate_id", sa.String(length=32), nullable=True),
        sa.Column("profile", sa.String(length=64), nullable=True),
        sa.Column("replaces", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("csr", sa.LargeBinary(), nullable=True),
        sa.Column("serial", sa.String(length=40), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_orders_account_created", "orders", ["account_id", "created_at"], unique=False
    )
    op.create_index("ix_orders_status", "orders", ["status"], unique=False)
    op.create_table(
        "settings",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "used_nonces",
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.Column("expires", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("value"),
    )
    op.create_index("ix_used_nonces_expires", "used_nonces", ["expires"], unique=False)


def downgrade() -> None:

    op.drop_index("ix_used_nonces_expires", table_name="used_nonces")
    op.drop_table("used_nonces")
    op.drop_table("settings")
    op.drop_index("ix_orders_status", table_name="orders")
    op.drop_index("ix_orders_account_created", table_name="orders")
    op.drop_table("orders")
    op.drop_index("ix_order_authzs_authz", table_name="order_authzs")
    op.drop_table("order_authzs")
    op.drop_index("ix_jobs_lease", table_name="jobs")
    op.drop_table("jobs")
    op.drop_index("ix_challenges_authz", table_name="challenges")
    op.drop_table("challenges")
    op.drop_index("ix_certificates_spki", table_name="certificates")
    op.drop_index("ix_certificates_account", table_name="certificates")
    op.drop_table("certificates")
    op.drop_index("ix_authzs_reuse", table_name="authzs")
    op.drop_table("authzs")
    op.drop_table("accounts")

"""Revocation status and renewal: renewal marks (RFC 9773), CRL and `replaces` indexes.

Revision ID: 0002_revocation_status
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_revocation_status"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "renewal_marks",
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("marked_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("serial"),
    )
    op.create_index("ix_certificates_revoked_at", "certificates", ["revoked_at"])
    op.create_index("ix_orders_replaces", "orders", ["replaces"])


def downgrade() -> None:
    op.drop_index("ix_orders_replaces", table_name="orders")
    op.drop_index("ix_certificates_revoked_at", table_name="certificates")
    op.drop_table("renewal_marks")

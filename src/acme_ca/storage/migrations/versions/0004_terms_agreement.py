"""Terms of service: which terms each account agreed to (RFC 8555 §7.3.3).

Existing accounts keep NULL: they agreed before the CA recorded which terms, and count
as having agreed to the terms in force at the first start after this migration (the
settings row `legacy_terms_of_service`), so an upgrade locks nobody out.

Revision ID: 0004_terms_agreement
Revises: 0003_issuance_policy
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_terms_agreement"
down_revision = "0003_issuance_policy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("accounts", sa.Column("tos_agreed_url", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("tos_agreed_url")

"""Certificate inventory (`admin certificates`, `admin revoke`): certificates by name
and an account's certificates newest first, without reading all certificates.

`ix_authzs_identifier` finds a name's authorizations, and through them the orders and
certificates (a certificate keeps its names as JSON text). `ix_certificates_account`
becomes (account_id, id): ids lead with their creation time, so an account's newest
certificates are the end of its range of the index, read a page at a time. No query
read the old one-column index but by its prefix.

Revision ID: 0006_certificate_inventory
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0006_certificate_inventory"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_authzs_identifier", "authzs", ["identifier_value"])
    op.drop_index("ix_certificates_account", table_name="certificates")
    op.create_index("ix_certificates_account", "certificates", ["account_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_certificates_account", table_name="certificates")
    op.create_index("ix_certificates_account", "certificates", ["account_id"])
    op.drop_index("ix_authzs_identifier", table_name="authzs")

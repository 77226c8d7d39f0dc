"""One live replacement per certificate (RFC 9773 §5): a unique index on
`orders.replaces` among orders that are not invalid.

Before the index, rows it would refuse are settled: pending or ready orders past
their expiry are made invalid (as they already read), and where two live orders
still name one certificate (concurrent newOrders could both pass the old check), all
but one stop naming it: the valid one, else the earliest.

Revision ID: 0005_one_live_replacement
Revises: 0002_revocation_status
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0005_one_live_replacement"
down_revision = "0002_revocation_status"
branch_labels = None
depends_on = None

_LIVE = "status <> 'invalid'"
# As storage.codec writes the error of an expired order.
_EXPIRED = '{"detail":"Order expired","sub":[],"type":"urn:ietf:params:acme:error:malformed"}'


def upgrade() -> None:
    op.execute(
        sa.text(
            "UPDATE orders SET status = 'invalid', error = :error WHERE replaces IS NOT NULL"
            " AND status IN ('pending', 'ready') AND expires <= :now"
        ).bindparams(error=_EXPIRED, now=int(time.time() * 1_000_000))
    )
    op.execute(
        "UPDATE orders SET replaces = NULL WHERE replaces IS NOT NULL AND status <> 'invalid'"
        " AND EXISTS (SELECT 1 FROM orders AS other WHERE other.replaces = orders.replaces"
        " AND other.status <> 'invalid' AND other.id <> orders.id"
        " AND ((other.status = 'valid') > (orders.status = 'valid')"
        " OR ((other.status = 'valid') = (orders.status = 'valid')"
        " AND (other.created_at < orders.created_at"
        " OR (other.created_at = orders.created_at AND other.id < orders.id)))))"
    )
    op.create_index(
        "ux_orders_replaces_live",
        "orders",
        ["replaces"],
        unique=True,
        sqlite_where=sa.text(_LIVE),
        postgresql_where=sa.text(_LIVE),
    )


def downgrade() -> None:
    op.drop_index("ux_orders_replaces_live", table_name="orders")

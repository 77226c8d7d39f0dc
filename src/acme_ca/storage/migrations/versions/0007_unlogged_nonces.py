"""PostgreSQL: `used_nonces` UNLOGGED. A redemption is then an INSERT that writes no
WAL and waits for no WAL flush at its commit (six per issuance); a crash of the
server empties the table, which is why the nonce key is bound to the server's start
(`Storage.load_nonce_scope`): nonces issued before a restart are refused, so none can
be replayed. SQLite keeps redemptions in a side file (`storage.nonce_log`); there
this migration does nothing.

Revision ID: 0007_unlogged_nonces
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0007_unlogged_nonces"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE used_nonces SET UNLOGGED")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE used_nonces SET LOGGED")

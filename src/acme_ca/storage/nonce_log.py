"""Used nonces on SQLite: a side file written inline, without an fsync per redemption.

Every ACME request redeems a nonce: six writes per issuance against five state
changes. On SQLite each durable (`synchronous=FULL`) commit costs an fsync and the
one writer lock, so the redemptions live in `<database>-nonces`, a WAL file of
their own with `synchronous=NORMAL`: a redemption is an INSERT of a few
microseconds on the event-loop thread, it never queues behind a state change, and
it survives a crash of any process (the page cache keeps it).

What it does not survive is a crash of the machine. So the nonce MAC key of a
SQLite CA is bound to the kernel's boot id (`nonce_scope`): after a reboot every
nonce issued before it fails its MAC, and no forgotten redemption can be replayed.
SQLite serves one host only (WAL needs shared memory), so every process of such a
CA shares the boot id. PostgreSQL keeps redemptions in its own `used_nonces` table.
The file's one table is made here, not by Alembic: it is a cache of redemptions
that may be deleted whenever the CA is stopped.
"""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

from acme_ca.storage.sqlite import connect_sqlite

__all__ = ["SqliteNonceLog", "boot_id"]

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> bytes:
    """This boot of the machine (changes at every boot); a constant where unknown."""
    try:
        return _BOOT_ID.read_bytes().strip()
    except OSError:
        return b"unknown-boot"


class SqliteNonceLog:
    def __init__(self, database_path: str) -> None:
        self.path = f"{database_path}-nonces"
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = connect_sqlite(self.path, synchronous="NORMAL")
            # Keyed by expiry (8 bytes, big-endian) then the nonce: nonces are redeemed
            # in about the order they expire, so an INSERT appends to the B-tree (half
            # the cost of a random text key plus an index on the expiry), and a purge
            # is a range delete on the key itself.
            conn.execute("CREATE TABLE IF NOT EXISTS redeemed (key BLOB PRIMARY KEY) WITHOUT ROWID")
            self._conn = conn
        return self._conn

    def redeem(self, value: str, expires_us: int) -> bool:
        """Record the nonce as used; False if it was used before (by any process)."""
        key = struct.pack(">q", expires_us) + value.encode("ascii", "replace")
        try:
            self._connection().execute("INSERT INTO redeemed (key) VALUES (?)", (key,))
        except sqlite3.IntegrityError:
            return False
        return True

    def purge(self, before_us: int) -> int:
        """Forget redemptions of nonces that expired before `before_us`."""
        cursor = self._connection().execute(
            "DELETE FROM redeemed WHERE key < ?", (struct.pack(">q", before_us),)
        )
        return cursor.rowcount

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

"""SQLite connections and the cross-process writer lock, shared by every SQLite user here."""

from __future__ import annotations

import fcntl
import sqlite3
import time

__all__ = ["LOCK_WAIT_SECONDS", "connect_sqlite", "lock_with_deadline", "set_wal"]

# As SQLite's own busy timeout: a writer waits this long, then fails "database is locked".
LOCK_WAIT_SECONDS = 30.0


def lock_with_deadline(fd: int, seconds: float) -> None:
    """Take the exclusive lock, waiting at most `seconds`: never hang forever."""
    deadline = time.monotonic() + seconds
    delay = 0.0002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise sqlite3.OperationalError("database is locked (writer lock)") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.002)


def set_wal(cursor: sqlite3.Connection | sqlite3.Cursor) -> None:
    """Switch to WAL. On a new file, connections of several processes starting at once
    race for it and the losers get "database is locked" at once (the journal-mode change
    does not wait on the busy handler), so retry for a bounded time."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def connect_sqlite(
    path: str, *, synchronous: str, autocheckpoint: int | None = None
) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=LOCK_WAIT_SECONDS, check_same_thread=False)
    conn.isolation_level = None  # we emit BEGIN ourselves
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout={int(LOCK_WAIT_SECONDS * 1000)}")
    try:
        set_wal(conn)
    except sqlite3.Error:
        conn.close()
        raise
    conn.execute(f"PRAGMA synchronous={synchronous}")
    # 32 MiB of page cache (SQLite's default is 2 MiB): with millions of rows the
    # upper levels of every index stay in memory, instead of a pread per B-tree level.
    conn.execute("PRAGMA cache_size=-32768")
    # Temporary B-trees (a subquery materialized, a sort) in memory, not in a file
    # under /var/tmp created and unlinked for the statement: about 1.4 files per
    # issuance, each an open, an unlink and writes (strace of a serving worker).
    conn.execute("PRAGMA temp_store=MEMORY")
    if autocheckpoint is not None:
        conn.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint)}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn

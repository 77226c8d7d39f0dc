"""Database engines for SQLite (embedded default) and PostgreSQL (production).

SQLite gets two engines: readers with deferred transactions, run inline on the
event loop, and one writer connection on its own thread whose transactions start
with `BEGIN IMMEDIATE`, so that a transaction that reads before it writes never
fails to upgrade its lock (SQLITE_BUSY), and writes inside one process queue
instead of spinning on the lock. PostgreSQL gets one engine (psycopg) whose
statements run on a pool of threads. See `executor` for why not asyncio drivers.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import ConnectionPoolEntry

from acme_ca.storage.database import Database
from acme_ca.storage.executor import AsyncishEngine
from acme_ca.storage.sqlite import LOCK_WAIT_SECONDS, lock_with_deadline, set_wal

__all__ = ["Engines", "create_engines", "is_sqlite", "normalize_url", "sqlite_url"]


@dataclass(frozen=True, slots=True)
class Engines:
    reader: AsyncishEngine
    writer: AsyncishEngine
    dialect: str
    db: Database
    """Raw driver connections for the request path (`database`)."""

    async def dispose(self) -> None:
        await self.db.close()
        await self.reader.dispose()
        if self.writer is not self.reader:
            await self.writer.dispose()


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def normalize_url(url: str) -> str:
    """Accept any SQLite or PostgreSQL URL spelling and pick the drivers used here.

    `sqlite+aiosqlite://` and `postgresql+asyncpg://` are accepted for convenience
    and mapped to the synchronous drivers (pysqlite, psycopg 3).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        parsed = parsed.set(drivername="sqlite+pysqlite")
    elif parsed.get_backend_name() == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_engine(url: str, *, immediate: bool, pool_size: int, synchronous: str) -> Engine:
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=30,
        connect_args={"timeout": 30, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let us emit BEGIN ourselves (pysqlite's implicit BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        set_wal(cursor)
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    lock_fd = _writer_lock_fd(url) if immediate else None

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if lock_fd is not None and not conn.info.get(_LOCKED):
            # Writers of all processes queue on a file lock, retried every 0.2-2 ms,
            # instead of SQLite's busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25 ...
            # ms between retries while another process writes.
            lock_with_deadline(lock_fd, LOCK_WAIT_SECONDS)
            conn.info[_LOCKED] = True
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    if lock_fd is not None:

        @event.listens_for(engine, "checkin")
        def _on_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            # After commit or rollback: the connection is back in the pool.
            if record.info.pop(_LOCKED, False):
                fcntl.flock(lock_fd, fcntl.LOCK_UN)

        @event.listens_for(engine, "engine_disposed")
        def _on_dispose(_engine: Any) -> None:
            # Closing the descriptor releases the lock even if a transaction was cut
            # short (its connection never checked in), and frees the descriptor.
            os.close(lock_fd)

    return engine


_LOCKED = "acme_ca_writer_lock"


def _writer_lock_fd(url: str) -> int | None:
    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    return os.open(f"{database}.writelock", os.O_RDWR | os.O_CREAT, 0o600)


def create_engines(url: str, *, pool_size: int = 10, sqlite_synchronous: str = "FULL") -> Engines:
    url = normalize_url(url)
    if is_sqlite(url):
        if sqlite_synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"bad sqlite synchronous mode {sqlite_synchronous!r}")
        reader = _sqlite_engine(url, immediate=False, pool_size=4, synchronous=sqlite_synchronous)
        writer = _sqlite_engine(url, immediate=True, pool_size=1, synchronous=sqlite_synchronous)
        database = make_url(url).database
        assert database, "SQLite needs a file: several connections share it"
        return Engines(
            reader=AsyncishEngine(reader, threads=0, connections=4),
            writer=AsyncishEngine(writer, threads=1, connections=1),
            dialect="sqlite",
            db=Database(sqlite_path=database, sqlite_synchronous=sqlite_synchronous),
        )
    engine = AsyncishEngine(
        create_engine(url, pool_size=pool_size, max_overflow=0, pool_pre_ping=True),
        threads=pool_size,
        connections=pool_size,
    )
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return Engines(
        reader=engine,
        writer=engine,
        dialect=make_url(url).get_backend_name(),
        db=Database(postgres_dsn=dsn, pool_size=pool_size),
    )

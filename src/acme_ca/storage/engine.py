"""Database engines for SQLite (embedded default) and PostgreSQL (production).

SQLite gets two engines: readers with deferred transactions, and one writer
connection whose transactions start with `BEGIN IMMEDIATE`, so that a transaction
that reads before it writes never fails to upgrade its lock (SQLITE_BUSY), and
writes inside one process queue in the pool instead of spinning on the lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

__all__ = ["Engines", "create_engines", "is_sqlite", "normalize_url", "sqlite_url"]


@dataclass(frozen=True, slots=True)
class Engines:
    reader: AsyncEngine
    writer: AsyncEngine
    dialect: str

    async def dispose(self) -> None:
        await self.reader.dispose()
        if self.writer is not self.reader:
            await self.writer.dispose()


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def normalize_url(url: str) -> str:
    """Accept plain `sqlite:///` and `postgresql://` URLs and pick the async drivers."""
    parsed = make_url(url)
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_engine(url: str, *, immediate: bool, pool_size: int, synchronous: str) -> AsyncEngine:
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=30,
        connect_args={"timeout": 30, "check_same_thread": False},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let us emit BEGIN ourselves (pysqlite's implicit BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def create_engines(url: str, *, pool_size: int = 10, sqlite_synchronous: str = "FULL") -> Engines:
    url = normalize_url(url)
    if is_sqlite(url):
        if sqlite_synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"bad sqlite synchronous mode {sqlite_synchronous!r}")
        reader = _sqlite_engine(url, immediate=False, pool_size=4, synchronous=sqlite_synchronous)
        writer = _sqlite_engine(url, immediate=True, pool_size=1, synchronous=sqlite_synchronous)
        return Engines(reader=reader, writer=writer, dialect="sqlite")
    engine = create_async_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
    )
    return Engines(reader=engine, writer=engine, dialect=make_url(url).get_backend_name())

"""The request path's database layer: group commit on SQLite, the connection pool on
PostgreSQL surviving a server that dropped its connections."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from acme_ca.storage.database import Database, IntegrityError, Sql

pytestmark = pytest.mark.asyncio


async def _create(sql: Sql) -> None:
    await sql.run("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")


async def _insert(sql: Sql, key: str) -> int:
    return await sql.run("INSERT INTO t (k, v) VALUES (?, 1)", (key,))


async def _count(sql: Sql) -> int:
    row = await sql.one("SELECT count(*) AS n FROM t")
    assert row is not None
    return int(row["n"])


async def test_sqlite_writes_of_one_turn_share_a_commit_and_fail_alone(tmp_path: Path) -> None:
    db = Database(sqlite_path=str(tmp_path / "g.db"))
    try:
        await db.write(_create)
        await db.write(_insert, "taken")
        # Queued in one turn of the loop: one transaction, one savepoint each.
        results = await asyncio.gather(
            db.write(_insert, "a"),
            db.write(_insert, "taken"),
            db.write(_insert, "b"),
            return_exceptions=True,
        )
        assert results[0] == 1
        assert results[2] == 1
        assert isinstance(results[1], IntegrityError)
        assert await db.read(_count) == 3
    finally:
        await db.close()


async def _synchronous(sql: Sql) -> int:
    row = await sql.one("PRAGMA synchronous")
    assert row is not None
    return int(row[0])


async def test_sqlite_transient_writes_skip_their_own_fsync(tmp_path: Path) -> None:
    # synchronous: 1 = NORMAL (no fsync at commit in WAL mode), 2 = FULL.
    db = Database(sqlite_path=str(tmp_path / "s.db"), sqlite_synchronous="FULL")
    try:
        assert await db.write(_synchronous, durable=False) == 1
        assert await db.write(_synchronous) == 2
        # One durable write in a batch makes the whole batch durable.
        together = await asyncio.gather(
            db.write(_synchronous, durable=False), db.write(_synchronous)
        )
        assert list(together) == [2, 2]
    finally:
        await db.close()


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _backend_pid(sql: Sql) -> int:
    row = await sql.one("SELECT pg_backend_pid() AS pid")
    assert row is not None
    return int(row["pid"])


@pytest.mark.postgres
async def test_postgres_pool_recovers_when_the_server_drops_its_connections(
    postgres_database: str,
) -> None:
    dsn = _dsn(postgres_database)
    db = Database(postgres_dsn=dsn, pool_size=2)
    try:
        pid = await db.read(_backend_pid)
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # A read on the dead pooled connection is run again on a new one.
        assert await db.read(_backend_pid) != pid
        pid = await db.read(_backend_pid)
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # A single-statement write is not retried (it may have committed) ...
        with pytest.raises(psycopg.OperationalError):
            await db.write_one("SELECT 1")
        # ... but the dead connection is gone, and the next one works.
        assert await db.write_one("SELECT 1") in (-1, 1)
    finally:
        await db.close()

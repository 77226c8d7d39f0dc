"""The request path's database layer: group commit on SQLite, the connection pool on
PostgreSQL surviving a server that dropped its connections."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import psycopg
import pytest
from sqlalchemy.engine import make_url

from acme_ca.storage import database
from acme_ca.storage.database import ConnectionLost, Database, IntegrityError, Sql

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


async def _temp_store(sql: Sql) -> int:
    row = await sql.one("PRAGMA temp_store")
    assert row is not None
    return int(row[0])


async def test_sqlite_keeps_temporary_btrees_in_memory(tmp_path: Path) -> None:
    # 2 = MEMORY: no temporary file is created and unlinked for a statement.
    db = Database(sqlite_path=str(tmp_path / "m.db"))
    try:
        assert await db.read(_temp_store) == 2
        assert await db.write(_temp_store) == 2
    finally:
        await db.close()


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
        _terminate(dsn, pid)
        # A read on the dead pooled connection is run again on a new one.
        assert await db.read(_backend_pid) != pid
        pid = await db.read(_backend_pid)
        _terminate(dsn, pid)
        # The goodbye of the server is seen before a write is sent: a new connection.
        assert await db.write_one("SELECT 1") in (-1, 1)
        # A statement whose connection breaks under it is not retried (it may have
        # committed) ...
        with pytest.raises(ConnectionLost):
            await db.write_one("SELECT pg_terminate_backend(pg_backend_pid())")
        # ... but the dead connection is gone, and the next one works.
        assert await db.write_one("SELECT 1") in (-1, 1)
    finally:
        await db.close()


@pytest.mark.postgres
async def test_postgres_connection_ended_by_the_server_is_not_pooled_again(
    postgres_database: str,
) -> None:
    """A FATAL of class 57 (PostgreSQL crashed, shutting down) ends the session even
    while `is_closed()` still says no: the connection is dropped, not pooled, and the
    next unit runs on a new one (seen: a pooled one failed its next statement with
    'another operation is in progress' after PostgreSQL was killed under load)."""
    db = Database(postgres_dsn=_dsn(postgres_database), pool_size=1)
    try:
        pid = await db.read(_backend_pid)

        async def ended(sql: Sql) -> None:
            await sql.one("SELECT 1")
            raise asyncpg.exceptions.CrashShutdownError("terminating connection because of crash")

        with pytest.raises(asyncpg.exceptions.CrashShutdownError) as raised:
            await db.read(ended)
        assert database.unavailable(raised.value)
        assert await db.read(_backend_pid) != pid
    finally:
        await db.close()


async def test_what_counts_as_the_database_being_unavailable() -> None:
    """A 503 with Retry-After for these (wfe), a 500 for anything else."""
    assert database.unavailable(ConnectionRefusedError(111, "Connection refused"))
    assert database.unavailable(psycopg.OperationalError("connection failed"))
    assert database.unavailable(asyncpg.exceptions.AdminShutdownError("shutting down"))
    assert database.unavailable(asyncpg.exceptions.InternalClientError("another operation"))
    assert database.unavailable(sqlite3.OperationalError("database is locked (writer lock)"))
    assert not database.unavailable(sqlite3.OperationalError("no such table: orders"))
    assert not database.unavailable(asyncpg.exceptions.UniqueViolationError("duplicate key"))
    assert not database.unavailable(ValueError("a bug"))


def _terminate(dsn: str, pid: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # Wait until the backend is gone, so its goodbye is on the socket.
        for _ in range(100):
            row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
            if row.fetchone() == (0,):
                return
            time.sleep(0.01)


_KILL_MYSELF = "SELECT pg_terminate_backend(pg_backend_pid())"


async def _keys(sql: Sql, prefix: str) -> list[str]:
    rows = await sql.all("SELECT k FROM t WHERE k LIKE ? ORDER BY k", (f"{prefix}%",))
    return [r["k"] for r in rows]


@pytest.fixture
async def pg_db(postgres_database: str) -> AsyncIterator[Database]:
    db = Database(postgres_dsn=_dsn(postgres_database), pool_size=1)
    await db.write(_create)
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Round trips on PostgreSQL: every one ends with a pipeline sync."""
    counted: list[int] = []
    sync = psycopg.AsyncPipeline.sync

    async def counting(self: psycopg.AsyncPipeline) -> None:
        counted.append(1)
        await sync(self)

    monkeypatch.setattr(psycopg.AsyncPipeline, "sync", counting)
    return counted


@pytest.mark.postgres
async def test_postgres_statements_ride_one_round_trip_where_no_result_is_awaited(
    pg_db: Database, syncs: list[int]
) -> None:
    p = uuid.uuid4().hex

    async def effects_only(sql: Sql) -> None:
        await sql.send("INSERT INTO t (k, v) VALUES (?, 1)", (f"{p}a",))
        await sql.many("INSERT INTO t (k, v) VALUES (?, 1)", [(f"{p}b",), (f"{p}c",)])

    async def with_a_result(sql: Sql) -> int:
        changed = await sql.run("UPDATE t SET v = v + 1 WHERE k = ?", (f"{p}a",))
        await sql.send("DELETE FROM t WHERE k = ?", (f"{p}b",))
        return changed

    async def finished(sql: Sql) -> list[int]:
        return await sql.finish(
            [
                ("UPDATE t SET v = 5 WHERE k = ?", (f"{p}c",)),
                # Sees the UPDATE before it, in the same transaction.
                ("DELETE FROM t WHERE k = ? AND EXISTS (SELECT 1 FROM t WHERE v = 5)", (f"{p}a",)),
            ]
        )

    await pg_db.write(effects_only)
    assert len(syncs) == 1  # an implicit transaction: no BEGIN, its Sync commits it
    syncs.clear()
    assert await pg_db.write(with_a_result) == 1
    assert len(syncs) == 2  # BEGIN with the UPDATE; the DELETE with the COMMIT
    syncs.clear()
    assert await pg_db.write(finished) == [1, 1]
    assert len(syncs) == 1
    assert await pg_db.read(_keys, p) == [f"{p}c"]


@pytest.mark.postgres
async def test_postgres_a_unit_failing_mid_pipeline_keeps_nothing_and_its_connection(
    pg_db: Database,
) -> None:
    p = uuid.uuid4().hex

    async def implicit(sql: Sql) -> None:
        await sql.send("INSERT INTO t (k, v) VALUES (?, 1)", (f"{p}a",))
        await sql.send("INSERT INTO t (k, v) VALUES (?, 1)", (f"{p}a",))  # duplicate
        await sql.send("INSERT INTO t (k, v) VALUES (?, 1)", (f"{p}b",))

    async def explicit(sql: Sql) -> None:
        await sql.run("INSERT INTO t (k, v) VALUES (?, 1)", (f"{p}c",))
        await sql.send("INSERT INTO t (k, v) VALUES (?, 1)", (f"{p}c",))  # duplicate
        await sql.send("INSERT INTO t (k, v) VALUES (?, 1)", (f"{p}d",))

    async def raises(sql: Sql) -> None:
        await sql.run("INSERT INTO t (k, v) VALUES (?, 1)", (f"{p}e",))
        await sql.send("INSERT INTO t (k, v) VALUES (?, 1)", (f"{p}f",))
        raise LookupError("the unit's own error")

    for unit in (implicit, explicit):
        with pytest.raises(IntegrityError):
            await pg_db.write(unit)
        # The next unit gets its own results: the connection is reused only once its
        # pipeline is back in step (idle, no results due), else dropped for a new one.
        # Which of the two happens depends on when the error's results arrive.
        assert await pg_db.read(_keys, p) == []
        assert isinstance(await pg_db.read(_backend_pid), int)
    with pytest.raises(LookupError):
        await pg_db.write(raises)
    assert await pg_db.read(_keys, p) == []
    assert await pg_db.write(_insert, f"{p}g") == 1


@pytest.mark.postgres
async def test_postgres_a_transaction_is_retried_only_before_it_may_have_committed(
    pg_db: Database,
) -> None:
    p = uuid.uuid4().hex
    calls: list[str] = []

    async def dies_before_commit(sql: Sql) -> None:
        calls.append("before")
        if len(calls) == 1:
            await sql.send("INSERT INTO t (k, v) VALUES (?, 1)", (f"{p}a",))
            await sql.run(_KILL_MYSELF)  # with BEGIN, no COMMIT sent yet
        await sql.run("INSERT INTO t (k, v) VALUES (?, 1)", (f"{p}b",))

    await pg_db.read(_backend_pid)  # a pooled connection, so a retry is allowed
    await pg_db.write(dies_before_commit)
    assert calls == ["before", "before"]
    assert await pg_db.read(_keys, p) == [f"{p}b"]

    calls.clear()

    async def dies_with_commit(sql: Sql) -> None:
        calls.append("with")
        await sql.run("INSERT INTO t (k, v) VALUES (?, 1)", (f"{p}c",))
        await sql.send(_KILL_MYSELF)  # goes with the COMMIT

    await pg_db.read(_backend_pid)
    with pytest.raises(psycopg.OperationalError):
        await pg_db.write(dies_with_commit)
    assert calls == ["with"]  # not retried: it might have committed
    assert await pg_db.read(_keys, p) == [f"{p}b"]  # it did not, here: killed first


async def test_placeholders_are_numbered_for_asyncpg() -> None:
    from acme_ca.storage.database import _dollar_text, _rowcount

    assert _dollar_text("SELECT a FROM t WHERE k = ? AND v IN (?, ?)") == (
        "SELECT a FROM t WHERE k = $1 AND v IN ($2, $3)"
    )
    assert _dollar_text("SELECT 1") == "SELECT 1"
    assert [_rowcount(s) for s in ("INSERT 0 1", "UPDATE 3", "SELECT 0", "BEGIN")] == [1, 3, 0, -1]


@pytest.mark.postgres
async def test_postgres_single_statement_conflict_keeps_its_connection(pg_db: Database) -> None:
    # A unique violation on the asyncpg path is an IntegrityError to the store, and the
    # connection stays in the pool (an SQL error, not a broken connection).
    key = uuid.uuid4().hex
    assert await pg_db.write_one("INSERT INTO t (k, v) VALUES (?, 1)", (key,)) == 1
    pid = await pg_db.read(_backend_pid)
    with pytest.raises(IntegrityError):
        await pg_db.write_one("INSERT INTO t (k, v) VALUES (?, 1)", (key,))
    assert await pg_db.read(_backend_pid) == pid
    rows = await pg_db.read(_keys, key)
    assert rows == [key]


@pytest.mark.postgres
async def test_postgres_reads_see_what_a_transaction_committed(pg_db: Database) -> None:
    # Reads (asyncpg) and transactions (psycopg) use different connections.
    key = uuid.uuid4().hex
    assert await pg_db.write(_insert, key) == 1
    assert await pg_db.read(_keys, key) == [key]


async def test_libpq_url_parameters_are_translated_for_asyncpg() -> None:
    from acme_ca.storage.database import asyncpg_connect_args

    dsn, options = asyncpg_connect_args(
        "postgresql://u:p%40ss@db:5432/acme?connect_timeout=3&keepalives=1"
        "&options=-c%20statement_timeout%3D5000%20-cwork_mem%3D8MB"
        "&sslmode=require&application_name=acme-ca&host=%2Frun%2Fpg"
    )
    assert dsn == (
        "postgresql://u:p%40ss@db:5432/acme?sslmode=require&application_name=acme-ca"
        "&host=%2Frun%2Fpg"
    )
    assert options == {
        "timeout": 3.0,
        "server_settings": {"statement_timeout": "5000", "work_mem": "8MB"},
    }
    # libpq's 0 (wait forever) and garbage keep the default bound.
    assert asyncpg_connect_args("postgresql://db/x?connect_timeout=0")[1] == {"timeout": 10.0}
    assert asyncpg_connect_args("postgresql://db/x?connect_timeout=soon")[1] == {"timeout": 10.0}


@pytest.mark.postgres
async def test_postgres_url_with_libpq_parameters_serves_both_pools(postgres_database: str) -> None:
    # psycopg takes libpq's parameters; asyncpg would send them to the server as settings.
    dsn = _dsn(postgres_database) + "?connect_timeout=5&keepalives=1&application_name=acme-ca"
    db = Database(postgres_dsn=dsn, pool_size=1)
    try:
        await db.write(_create)
        assert await db.read(_backend_pid) > 0
        row = await db.read(_one_setting)
        assert row == "acme-ca"
    finally:
        await db.close()


async def _one_setting(sql: Sql) -> str:
    row = await sql.one("SELECT current_setting('application_name') AS v")
    assert row is not None
    return str(row["v"])


@contextmanager
def _held_writer_lock(path: Path) -> Iterator[None]:
    """Another process's writer holding the lock (an open file description of its own)."""
    fd = os.open(f"{path}.writelock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


async def test_sqlite_writes_wait_for_another_writer_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "w.db"
    db = Database(sqlite_path=str(path))
    try:
        await db.write(_create)
        with _held_writer_lock(path):
            first = asyncio.ensure_future(db.write(_insert, "a"))
            await asyncio.sleep(0.02)
            second = asyncio.ensure_future(db.write(_insert, "b"))
            await asyncio.sleep(0.02)
            # The loop ran meanwhile, and reads need no writer lock.
            assert not first.done()
            assert not second.done()
            assert await db.read(_count) == 0
        assert list(await asyncio.wait_for(asyncio.gather(first, second), 5)) == [1, 1]
        assert await db.read(_count) == 2
    finally:
        await db.close()


async def test_sqlite_write_fails_locked_after_the_lock_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "LOCK_WAIT_SECONDS", 0.05)
    path = tmp_path / "l.db"
    db = Database(sqlite_path=str(path))
    try:
        await db.write(_create)
        with (
            _held_writer_lock(path),
            pytest.raises(sqlite3.OperationalError, match="database is locked"),
        ):
            await asyncio.wait_for(db.write(_insert, "a"), 5)
        # Nothing was written, and the writer works again once the lock is free.
        assert await db.read(_count) == 0
        assert await db.write(_insert, "a") == 1
    finally:
        await db.close()


async def test_sqlite_close_writes_what_waited_for_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    db = Database(sqlite_path=str(path))
    await db.write(_create)
    with _held_writer_lock(path):
        pending = asyncio.ensure_future(db.write(_insert, "a"))
        await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(db.close())
        await asyncio.sleep(0.01)
        assert not pending.done()
    await asyncio.wait_for(closing, 5)
    assert await pending == 1
    again = Database(sqlite_path=str(path))
    try:
        assert await again.read(_count) == 1
    finally:
        await again.close()

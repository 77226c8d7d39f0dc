"""Raw DBAPI execution for the request path: prepared SQL text, one hop per unit of work.

SQLAlchemy (schema, Alembic, cold paths) costs 20-40 µs of Python per statement
around a 3-10 µs SQLite statement; the request path runs 30-40 statements per
issuance, so the store's hot queries are plain SQL on the drivers' own connections
(sqlite3, psycopg 3), written once with `?` placeholders (rewritten to `%s` for
psycopg). A unit of work is a coroutine `fn(sql: Sql, *args)` run in one go:

- SQLite reads run inline on the event-loop thread on one connection (WAL readers
  never wait on writers; a read is a few microseconds).
- SQLite writes **group-commit**: the writes queued in one turn of the event loop
  (or while the previous batch ran) run in one transaction, each in its own
  savepoint, and all of them become durable with one `synchronous=FULL` commit
  before any caller hears back. Durability is kept; the fsync is shared. Writers of
  all processes (and the SQLAlchemy writer of this one) queue on the same file lock.
- PostgreSQL runs every unit on the event loop, on two small pools of asynchronous
  connections; PostgreSQL shares the WAL flush of concurrent commits itself.
  - Reads and single statements (`read`, `write_one`) run on asyncpg: one round trip
    each, prepared once per connection, at 18-41 µs of client CPU per statement
    against psycopg's 60-113 µs (`benchmarks/pg_drivers.py`, docs/PERFORMANCE.md).
  - Transactions (`write`) run on psycopg connections kept in pipeline mode, so a
    round trip carries as many statements as the unit can send before it needs a
    result: BEGIN travels with the first statement, statements sent for their effect
    only (`Sql.send`, `Sql.many`) travel with the next awaited one or with the
    COMMIT, and a transaction that awaits nothing is one round trip, its Sync
    committing it (an implicit transaction, PostgreSQL protocol §55.2.4
    "Pipelining"). asyncpg would need a round trip for BEGIN and one for COMMIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import psycopg
from psycopg.rows import dict_row

from acme_ca.storage.nonce_log import SqliteNonceLog
from acme_ca.storage.sqlite import LOCK_WAIT_SECONDS, connect_sqlite

__all__ = ["ConnectionLost", "Database", "IntegrityError", "Row", "Sql", "unavailable"]

T = TypeVar("T")
Row = Any
"""A row read by name (`row["id"]`): `sqlite3.Row`, psycopg's dict row or asyncpg's Record."""

IntegrityError: tuple[type[Exception], ...] = (
    sqlite3.IntegrityError,
    psycopg.IntegrityError,
    asyncpg.IntegrityConstraintViolationError,
)
ConnectionLost: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    OSError,
)
"""What a PostgreSQL unit raises when its connection broke under it."""

# The server ends the session with these (class 57, operator intervention: shutdown,
# crash of another backend, not accepting yet) or the driver lost track of it; the
# connection is not to be used again, whatever `is_closed()` says at that moment.
# Seen with PostgreSQL killed under load: a connection put back after its FATAL
# 57P02 failed the next statement with "another operation is in progress".
_APG_ENDED = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InternalClientError,
)


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be used right now (its server is down,
    restarting or unreachable, or the SQLite writer lock stayed taken): worth a 503 and
    a retry, not a 500."""
    if isinstance(exc, (*ConnectionLost, *_APG_ENDED)):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


_MAX_BATCH = 256
# While another process holds the SQLite writer lock, how often the loop tries again.
_LOCK_RETRY_SECONDS = 0.001


# Where a PostgreSQL unit's transaction stands (`Sql._tx`).
_NO_TX = 0
"""Not a transaction: every statement is its own (a read, `write_one`)."""
_BEGIN_DUE = 1
"""A transaction with nothing sent yet: BEGIN goes with the first round trip."""
_OPEN = 2
"""BEGIN was sent."""
_ENDED = 3
"""COMMIT (or ROLLBACK) was sent."""

_DRAIN_TRIES = 4


class Sql:
    """One connection for the length of one unit of work; every method is awaited.

    On SQLite the methods never suspend (the driver is synchronous), so the group
    writer drives a unit with `drive` and readers await it without a context switch.
    On PostgreSQL they are psycopg's asynchronous calls on a connection in pipeline
    mode: `one`, `all` and `run` wait for their result; `send` and `many` do not, in
    a transaction (their errors surface at the next round trip, and the unit fails).
    """

    __slots__ = ("_conn", "_pipeline", "_queued", "_tx", "committing", "done", "postgres")

    def __init__(
        self,
        conn: Any,
        *,
        postgres: bool,
        pipeline: psycopg.AsyncPipeline | None = None,
        transaction: bool = False,
    ) -> None:
        self._conn = conn
        self.postgres = postgres
        self._pipeline = pipeline
        self._queued: list[tuple[str, Any, bool]] = []
        self._tx = _BEGIN_DUE if transaction else _NO_TX
        self.done = 0
        """Round trips completed (PostgreSQL): a unit that broke before any may be retried."""
        self.committing = False
        """Whether something that commits was sent (PostgreSQL): never retried after that."""

    async def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        if self.postgres:
            (cursor,) = await self._roundtrip(((sql, params),))
            return await cursor.fetchone()
        return self._conn.execute(sql, params).fetchone()

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        if self.postgres:
            (cursor,) = await self._roundtrip(((sql, params),))
            return list(await cursor.fetchall())
        return list(self._conn.execute(sql, params).fetchall())

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute; the number of rows changed."""
        if self.postgres:
            (cursor,) = await self._roundtrip(((sql, params),))
        else:
            cursor = self._conn.execute(sql, params)
        rowcount: int = cursor.rowcount
        return rowcount

    async def send(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Execute for its effect only: in a PostgreSQL transaction it goes with the next
        round trip (the next awaited statement, or the COMMIT)."""
        if not self.postgres:
            self._conn.execute(sql, params)
        elif self._tx == _NO_TX:
            await self._roundtrip(((sql, params),))
        else:
            self._queued.append((_pg_text(sql), params, False))

    async def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """`send` once per row."""
        if not rows:
            return
        if not self.postgres:
            self._conn.executemany(sql, rows)
            return
        self._queued.append((_pg_text(sql), rows, True))
        if self._tx == _NO_TX:
            await self._roundtrip()

    async def finish(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        """The unit's last statements, executed in order; the number of rows each changed.

        In a PostgreSQL transaction they go with the COMMIT: with what is queued, one
        round trip. No statement may depend on another's result but through the
        database (`WHERE EXISTS ...` on what an earlier one wrote).
        """
        if not self.postgres:
            return [self._conn.execute(text, params).rowcount for text, params in statements]
        assert self._tx != _ENDED, "a unit ends once"
        cursors = await self._roundtrip(statements, commit=self._tx != _NO_TX)
        return [cursor.rowcount for cursor in cursors]

    async def commit(self) -> None:
        """End the unit's transaction (PostgreSQL): COMMIT with whatever is still queued,
        or, if BEGIN was never sent, the queued statements as one implicit transaction."""
        if self._tx == _OPEN or self._queued:
            await self._roundtrip(commit=True)
        self._tx = _ENDED

    async def rollback(self) -> None:
        """After the unit failed (PostgreSQL): nothing it did is kept."""
        self._queued.clear()
        conn = self._conn
        if self._tx != _OPEN or conn.broken:
            return
        self._tx = _ENDED
        if conn.pgconn.transaction_status != _IDLE:
            assert self._pipeline is not None
            await conn.execute("ROLLBACK")
            await self._pipeline.sync()

    async def _roundtrip(
        self, awaited: Sequence[tuple[str, Sequence[Any]]] = (), *, commit: bool = False
    ) -> list[psycopg.AsyncCursor[Any]]:
        """Send the queued statements, then the `awaited` ones (BEGIN before them if the
        transaction starts here, COMMIT after them if `commit`), and wait for all their
        results; the cursors of the `awaited`."""
        conn, pipeline = self._conn, self._pipeline
        assert pipeline is not None
        begin = self._tx == _BEGIN_DUE and not commit
        # From the first byte of a COMMIT, or of a statement that commits on its own (a
        # Sync outside BEGIN), the unit may have committed.
        self.committing = self.committing or commit or self._tx == _NO_TX
        cursors = []
        try:
            if begin:
                await conn.execute("BEGIN")
                self._tx = _OPEN
            queued, self._queued = self._queued, []
            for q_text, q_params, rows in queued:
                if rows:
                    await conn.cursor().executemany(q_text, q_params)
                else:
                    await conn.execute(q_text, q_params)
            for text, params in awaited:
                cursors.append(await conn.execute(_pg_text(text), params))
            if commit:
                if self._tx == _OPEN:
                    await conn.execute("COMMIT")
                self._tx = _ENDED
            await pipeline.sync()
        except psycopg.Error:
            if not conn.broken:
                await _drain(conn, pipeline)
            raise
        self.done += 1
        return cursors


async def _drain(conn: psycopg.AsyncConnection[Any], pipeline: psycopg.AsyncPipeline) -> None:
    """After an error: take in every result still due (a statement's error may arrive
    while later ones are still being sent), so the next statement's results are its own."""
    for _ in range(_DRAIN_TRIES):
        if not pipeline.result_queue and conn.pgconn.pipeline_status == _PIPELINE_ON:
            return
        try:
            await pipeline.sync()
        except psycopg.Error:
            if conn.broken:
                return


class _ApgSql(Sql):
    """A read or a single statement on an asyncpg connection (PostgreSQL): each
    statement is its own implicit transaction and its own round trip."""

    __slots__ = ()

    def __init__(self, conn: asyncpg.Connection) -> None:
        super().__init__(conn, postgres=True)

    async def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row = await self._conn.fetchrow(_dollar_text(sql), *params)
        self.done += 1
        return row

    async def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        rows: list[Row] = await self._conn.fetch(_dollar_text(sql), *params)
        self.done += 1
        return rows

    async def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.committing = True  # from its first byte it may commit
        status: str = await self._conn.execute(_dollar_text(sql), *params)
        self.done += 1
        return _rowcount(status)

    async def send(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self.run(sql, params)

    async def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError("several rows are written in a transaction (Database.write)")

    async def finish(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        return [await self.run(text, params) for text, params in statements]

    async def commit(self) -> None:
        return None

    async def rollback(self) -> None:
        return None


def _rowcount(status: str) -> int:
    # The command tag: "INSERT 0 1", "UPDATE 3", "SELECT 1"; others count as unknown.
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else -1


_DOLLAR_TEXT: dict[str, str] = {}


def _dollar_text(sql: str) -> str:
    """`?` placeholders numbered for asyncpg (`$1`, `$2`, ...)."""
    text = _DOLLAR_TEXT.get(sql)
    if text is None:
        # The store's SQL has no literal '?' or '$': placeholders are the only ones.
        assert "$" not in sql
        pieces = sql.split("?")
        text = pieces[0] + "".join(f"${i}{piece}" for i, piece in enumerate(pieces[1:], 1))
        if len(_DOLLAR_TEXT) < 4096:  # IN lists of varying length make new texts
            _DOLLAR_TEXT[sql] = text
    return text


Unit = Callable[..., Coroutine[Any, Any, T]]


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a unit of work that never suspends (SQLite) to its end, synchronously."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a SQLite unit of work suspended")


_PG_TEXT: dict[str, str] = {}


def _pg_text(sql: str) -> str:
    text = _PG_TEXT.get(sql)
    if text is None:
        # The store's SQL has no literal '?' or '%': placeholders are the only ones.
        assert "%" not in sql
        text = _PG_TEXT[sql] = sql.replace("?", "%s")
    return text


_Item = tuple[Unit[Any], tuple[Any, ...], asyncio.Future[Any], bool]
"""A queued write: the unit, its arguments, its caller's future, whether it must be durable."""

# WAL checkpoints run on `_Checkpointer`'s thread every second. A checkpoint in the
# committing connection (SQLite's default, every 1000 pages) copies the pages of the
# last ~50 issuances into a large database file at random places and fsyncs it, inside
# some request's commit; a WAL of this many pages is the fallback if the thread lags.
_AUTOCHECKPOINT = 20_000
_CHECKPOINT_SECONDS = 1.0


class _Checkpointer:
    """Passive WAL checkpoints on a thread of their own: they wait for no writer or
    reader and block none, and the fsync of the database file happens off the loop."""

    def __init__(self, path: str, *, synchronous: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="acme-db-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while not self._stop.wait(_CHECKPOINT_SECONDS):
            try:
                if conn is None:
                    conn = connect_sqlite(self._path, synchronous=self._synchronous)
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:
                if conn is not None:
                    conn.close()
                conn = None  # tried again on the next tick
        if conn is not None:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=LOCK_WAIT_SECONDS)


class _GroupWriter:
    """The SQLite writer: batches the writes queued in one turn of the event loop into
    one durable commit, on the event-loop thread, on the connection the process also
    reads on.

    One connection for both: a WAL connection drops its whole page cache whenever
    another connection has committed, so a reader connection of its own re-read its
    pages after every commit of this process's writer (55 `pread64` per issuance; 13
    on one connection). Reads never see a batch half done: a batch runs to its end
    within one callback (SQLite units never suspend), and nothing else runs on the
    loop meanwhile.

    When another process holds the writer lock, the loop tries again at its next turn
    and then every millisecond, without blocking, while new writes join the waiting
    batch (no thread hop and no GIL hand-off); after `LOCK_WAIT_SECONDS` the batch
    fails "database is locked", as SQLite's own busy timeout would. While a batch
    runs, new writes queue for the next one.
    """

    def __init__(self, path: str, *, synchronous: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._lock_fd = os.open(f"{path}.writelock", os.O_RDWR | os.O_CREAT, 0o600)
        self._conn: sqlite3.Connection | None = None
        self._pending: list[_Item] = []
        self._mode = synchronous
        self._scheduled = False
        self._lock_deadline: float | None = None
        """When the batch waiting for another process's lock gives up (loop time)."""
        self._retry: asyncio.TimerHandle | None = None

    def submit(self, fn: Unit[T], args: tuple[Any, ...], *, durable: bool) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((fn, args, future, durable))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush, loop)
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        self._retry = None
        if not self._pending:
            return
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._wait_for_lock(loop)
            return
        self._lock_deadline = None
        batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
        _resolve(batch, self._locked_batch(batch))
        self._reschedule(loop)

    def _wait_for_lock(self, loop: asyncio.AbstractEventLoop) -> None:
        """Another process writes: try again soon, on this loop (no thread hop, no GIL
        hand-off; measured, a hop per contended batch cost more than the polls)."""
        now = loop.time()
        if self._lock_deadline is None:
            # First miss: once more at the next turn, the other batch may be done.
            self._lock_deadline = now + LOCK_WAIT_SECONDS
            self._scheduled = True
            loop.call_soon(self._flush, loop)
            return
        if now >= self._lock_deadline:
            self._lock_deadline = None
            self._fail_pending()
            return
        self._scheduled = True
        self._retry = loop.call_later(_LOCK_RETRY_SECONDS, self._flush, loop)

    def _fail_pending(self) -> None:
        """Another process held the writer lock past `LOCK_WAIT_SECONDS`: the queued
        writes fail as SQLite's own busy timeout would fail them."""
        batch, self._pending = self._pending, []
        error = sqlite3.OperationalError("database is locked (writer lock)")
        _resolve(batch, [(False, error)] * len(batch))

    def _reschedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._pending and not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush, loop)

    def _locked_batch(self, batch: list[_Item]) -> list[tuple[bool, Any]]:
        """Run the batch under the writer lock, taken already, then release it."""
        try:
            return self._run_batch(batch)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def connection(self) -> sqlite3.Connection:
        """The process's SQLite connection, for its writes and its reads."""
        if self._conn is None:
            self._conn = connect_sqlite(
                self._path, synchronous=self._synchronous, autocheckpoint=_AUTOCHECKPOINT
            )
            self._mode = self._synchronous
        return self._conn

    def _run_batch(self, batch: list[_Item]) -> list[tuple[bool, Any]]:
        try:
            conn = self.connection()
        except BaseException as exc:
            return [(False, exc)] * len(batch)
        try:
            # A batch of writes that need not survive a power cut commits without an
            # fsync of its own (WAL, `synchronous=NORMAL`); the next durable commit
            # syncs it too.
            durable = self._synchronous not in ("FULL", "EXTRA") or any(i[3] for i in batch)
            mode = self._synchronous if durable else "NORMAL"
            if mode != self._mode:
                conn.execute(f"PRAGMA synchronous={mode}")
                self._mode = mode
            sql = Sql(conn, postgres=False)
            conn.execute("BEGIN IMMEDIATE")
            outcomes: list[tuple[bool, Any]] = []
            if len(batch) == 1:
                fn, args, _, _ = batch[0]
                outcomes.append((True, drive(fn(sql, *args))))
            else:
                for fn, args, _, _ in batch:
                    # Each write in its own savepoint: one that fails leaves no trace
                    # and does not undo the others.
                    conn.execute("SAVEPOINT unit")
                    try:
                        outcomes.append((True, drive(fn(sql, *args))))
                    except Exception as exc:
                        conn.execute("ROLLBACK TO unit")
                        outcomes.append((False, exc))
                    conn.execute("RELEASE unit")
            conn.execute("COMMIT")
            return outcomes
        except BaseException as exc:
            # A failed commit (or a lone unit's error): nothing of the batch is kept.
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    self._conn = None
                    conn.close()
            return [(False, exc)] * len(batch)

    async def close(self) -> None:
        """Write what is still queued (waiting for the lock on this loop), then close."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while self._pending:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() < deadline:
                    await asyncio.sleep(_LOCK_RETRY_SECONDS)
                    continue
                self._fail_pending()
                break
            batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
            _resolve(batch, self._locked_batch(batch))
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        os.close(self._lock_fd)


def _resolve(batch: list[_Item], outcomes: list[tuple[bool, Any]]) -> None:
    for (_, _, future, _), (ok, value) in zip(batch, outcomes, strict=True):
        if future.done():
            continue  # the caller was cancelled; the write happened all the same
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class Database:
    """Where the store's units of work run (see the module docstring)."""

    def __init__(
        self,
        *,
        sqlite_path: str | None = None,
        sqlite_synchronous: str = "FULL",
        postgres_dsn: str | None = None,
        pool_size: int = 8,
    ) -> None:
        self.postgres = postgres_dsn is not None
        self._writer: _GroupWriter | None = None
        self._sqlite_path = sqlite_path
        self._synchronous = sqlite_synchronous
        self._dsn = postgres_dsn
        self._idle: list[_PgConn] = []
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self._pool_size = pool_size
        self._slots: asyncio.Semaphore | None = None
        self._apg_idle: list[asyncpg.Connection] = []
        self._apg_slots: asyncio.Semaphore | None = None
        self.nonce_log: SqliteNonceLog | None = None
        self._checkpointer: _Checkpointer | None = None
        if sqlite_path is not None:
            self._writer = _GroupWriter(sqlite_path, synchronous=sqlite_synchronous)
            self.nonce_log = SqliteNonceLog(sqlite_path)

    # ---- SQLite ------------------------------------------------------------------

    def _sqlite_connection(self) -> sqlite3.Connection:
        # Reads go on the writer's own connection (see `_GroupWriter`).
        assert self._writer is not None
        return self._writer.connection()

    def _start_checkpoints(self) -> None:
        # Only a process that writes through the request path grows the WAL this way;
        # admin commands and the status listener keep SQLite's own checkpoints.
        if self._checkpointer is None:
            assert self._sqlite_path is not None
            self._checkpointer = _Checkpointer(self._sqlite_path, synchronous=self._synchronous)

    # ---- PostgreSQL --------------------------------------------------------------

    def _pool_slots(self) -> asyncio.Semaphore:
        self._bind_loop()
        assert self._slots is not None
        return self._slots

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._pool_loop is not loop or self._slots is None:
            # Connections belong to the loop that opened them.
            for conn, _ in self._idle:
                conn.pgconn.finish()
            self._idle.clear()
            for apg in self._apg_idle:
                apg.terminate()
            self._apg_idle.clear()
            self._pool_loop = loop
            self._slots = asyncio.Semaphore(self._pool_size)
            self._apg_slots = asyncio.Semaphore(self._pool_size)

    async def _apg_checkout(self) -> tuple[asyncpg.Connection, bool]:
        """An asyncpg connection, and whether it comes from the pool."""
        while self._apg_idle:
            conn = self._apg_idle.pop()
            if not conn.is_closed() and not _apg_spoke_while_idle(conn):
                return conn, True
            conn.terminate()  # the server said goodbye while it sat idle
        assert self._dsn is not None
        dsn, options = asyncpg_connect_args(self._dsn)
        conn = await asyncpg.connect(dsn, statement_cache_size=_STATEMENT_CACHE, **options)
        return conn, False

    async def _on_apg(self, fn: Unit[T], args: tuple[Any, ...], *, retry_safe: bool) -> T:
        """A read or a single statement on an asyncpg connection (see the module docstring)."""
        self._bind_loop()
        assert self._apg_slots is not None
        async with self._apg_slots:
            while True:
                conn, pooled = await self._apg_checkout()
                sql = _ApgSql(conn)
                try:
                    result = await fn(sql, *args)
                except BaseException as exc:
                    sql_error = isinstance(exc, asyncpg.PostgresError) and not isinstance(
                        exc, _APG_ENDED
                    )
                    if sql_error and not conn.is_closed():
                        self._apg_idle.append(conn)  # an SQL error leaves it usable
                        raise
                    conn.terminate()
                    if not isinstance(exc, (*ConnectionLost, *_APG_ENDED, asyncpg.PostgresError)):
                        raise  # cancelled, or not the server's doing
                    # The server went away (restart, failover, terminated backend): the
                    # other idle connections are as dead as this one.
                    self._drop_apg_idle()
                    if pooled and sql.done == 0 and (retry_safe or not sql.committing):
                        continue  # nothing ran and nothing committed: once more, new connection
                    raise
                self._apg_idle.append(conn)
                return result

    def _drop_apg_idle(self) -> None:
        idle, self._apg_idle = self._apg_idle, []
        for conn in idle:
            conn.terminate()

    async def _checkout(self) -> tuple[_PgConn, bool]:
        """A connection in pipeline mode, and whether it comes from the pool."""
        while self._idle:
            pooled = self._idle.pop()
            if not _spoke_while_idle(pooled[0]):
                return pooled, True
            # The server said goodbye while it sat idle (restart, terminated backend):
            # found before a statement is sent, so even a unit that commits in its
            # first round trip runs on a fresh connection.
            await pooled[0].close()
        assert self._dsn is not None
        conn = await psycopg.AsyncConnection.connect(
            self._dsn, autocommit=True, row_factory=dict_row
        )
        # What `conn.pipeline()` does, without an async generator held open for the
        # connection's life: it stays in pipeline mode until it is closed.
        pipeline = psycopg.AsyncPipeline(conn)
        conn._pipeline = pipeline
        await pipeline.__aenter__()
        return (conn, pipeline), False

    async def _on_pool(
        self, fn: Unit[T], args: tuple[Any, ...], *, transaction: bool, retry_safe: bool
    ) -> T:
        async with self._pool_slots():
            while True:
                (conn, pipeline), pooled = await self._checkout()
                sql = Sql(conn, postgres=True, pipeline=pipeline, transaction=transaction)
                try:
                    result = await self._unit(sql, fn, args, transaction=transaction)
                except psycopg.Error:
                    if not (conn.broken or conn.closed):
                        # An SQL error leaves the connection usable.
                        self._release(conn, pipeline)
                        raise
                    await conn.close()
                    # The server went away (restart, failover): the other idle
                    # connections are as dead as this one.
                    await self._drop_idle()
                    if pooled and sql.done == 0 and (retry_safe or not sql.committing):
                        continue  # nothing ran and nothing committed: once more, new connection
                    raise
                except BaseException:
                    await conn.close()
                    raise
                self._release(conn, pipeline)
                return result

    @staticmethod
    async def _unit(sql: Sql, fn: Unit[T], args: tuple[Any, ...], *, transaction: bool) -> T:
        if not transaction:
            return await fn(sql, *args)
        try:
            result = await fn(sql, *args)
            await sql.commit()
        except Exception:
            await sql.rollback()
            raise
        return result

    def _release(self, conn: psycopg.AsyncConnection[Any], pipeline: psycopg.AsyncPipeline) -> None:
        pgconn = conn.pgconn
        if (
            pgconn.transaction_status == _IDLE
            and pgconn.pipeline_status == _PIPELINE_ON
            and not pipeline.result_queue
        ):
            self._idle.append((conn, pipeline))
        else:
            pgconn.finish()

    async def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await conn.close()

    # ---- the API -----------------------------------------------------------------

    async def read(self, fn: Unit[T], *args: Any) -> T:
        """`fn(sql, *args)` on a connection, each statement on its own snapshot."""
        if self.postgres:
            return await self._on_apg(fn, args, retry_safe=True)
        return await fn(Sql(self._sqlite_connection(), postgres=False), *args)

    async def write_one(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One statement, atomic by itself: on PostgreSQL without BEGIN and COMMIT round
        trips. The number of rows changed."""
        if self._writer is not None:
            self._start_checkpoints()
            return await self._writer.submit(_run_one, (sql, params), durable=True)
        # Not retried: a statement whose connection broke may have committed.
        return await self._on_apg(_run_one, (sql, params), retry_safe=False)

    async def write(self, fn: Unit[T], *args: Any, durable: bool = True) -> T:
        """`fn(sql, *args)` in a transaction, all or nothing; durable when this returns.

        `durable=False` is for transient states a power cut may take back (a challenge
        or an order in `processing`): on SQLite their commit waits for no fsync of its
        own; they become durable with the next durable commit.
        """
        if self._writer is not None:
            self._start_checkpoints()
            return await self._writer.submit(fn, args, durable=durable)
        return await self._on_pool(fn, args, transaction=True, retry_safe=False)

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            await asyncio.get_running_loop().run_in_executor(None, checkpointer.close)
        if self.nonce_log is not None:
            self.nonce_log.close()
        await self._drop_idle()
        idle, self._apg_idle = self._apg_idle, []
        for conn in idle:
            await conn.close()


_IDLE = psycopg.pq.TransactionStatus.IDLE
_PIPELINE_ON = psycopg.pq.PipelineStatus.ON
_PgConn = tuple[psycopg.AsyncConnection[Any], psycopg.AsyncPipeline]


_CONNECT_TIMEOUT = 10.0
"""Seconds for an asyncpg connection to open unless the URL says (a refused one fails
at once)."""
# libpq client parameters that asyncpg does not know: it would send them to the server
# as settings, and the connection would fail ("unrecognized configuration parameter").
_LIBPQ_CLIENT_ONLY = frozenset(
    {
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "sslcompression",
        "gssencmode",
        "channel_binding",
        "requirepeer",
        "fallback_application_name",
        "client_encoding",
        "load_balance_hosts",
        "sslsni",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
    }
)


def asyncpg_connect_args(dsn: str) -> tuple[str, dict[str, Any]]:
    """The one database URL (written for libpq and psycopg) as asyncpg takes it:
    `connect_timeout` becomes asyncpg's `timeout`, `options=-c name=value` its
    `server_settings`, and libpq's client-side parameters are dropped."""
    parts = urlsplit(dsn)
    kept: list[tuple[str, str]] = []
    options: dict[str, Any] = {"timeout": _CONNECT_TIMEOUT}
    settings: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "connect_timeout":
            with contextlib.suppress(ValueError):
                seconds = float(value)
                if seconds > 0:  # libpq: 0 means wait forever; asyncpg needs a number
                    options["timeout"] = seconds
        elif name == "options":
            words = value.split()
            for i, word in enumerate(words):
                setting = word[2:] if word.startswith("-c") and len(word) > 2 else None
                if word == "-c" and i + 1 < len(words):
                    setting = words[i + 1]
                if setting and "=" in setting:
                    key, _, val = setting.partition("=")
                    settings[key] = val
        elif name not in _LIBPQ_CLIENT_ONLY:
            kept.append((name, value))
    if settings:
        options["server_settings"] = settings
    return urlunsplit(parts._replace(query=urlencode(kept))), options


_STATEMENT_CACHE = 512
"""Prepared statements kept per asyncpg connection: the store's texts, IN lists included."""


def _apg_spoke_while_idle(conn: asyncpg.Connection) -> bool:
    """As `_spoke_while_idle`: asyncpg reads what arrives only when the loop runs, and a
    pool checkout may come before that (a terminated backend's FATAL is on the socket)."""
    transport = getattr(conn, "_transport", None)  # asyncpg keeps its transport here
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock is not None and _has_input(sock)


def _spoke_while_idle(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle connection has input: the server sends nothing unasked but a
    FATAL error before it closes, or the end of the stream."""
    try:
        sock = conn.pgconn.socket
    except psycopg.OperationalError:
        return True
    return _has_input(sock)


def _has_input(sock: Any) -> bool:
    """Readable now (or unusable); a socket or a file descriptor."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


async def _run_one(sql: Sql, text: str, params: Sequence[Any]) -> int:
    return await sql.run(text, params)

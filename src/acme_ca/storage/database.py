"""Raw DBAPI execution for the request path: prepared SQL text, one hop per unit of work.

SQLAlchemy (schema, Alembic, cold paths) costs 20-40 µs of Python per statement
around a 3-10 µs SQLite statement; the request path runs 30-40 statements per
issuance, so the store's hot queries are plain SQL on the drivers' own connections
(sqlite3, psycopg 3), written once with `?` placeholders (rewritten to `%s` for
psycopg). A unit of work is a function `fn(sql: Sql, *args)` run in one go:

- SQLite reads run inline on the event-loop thread on one connection (WAL readers
  never wait on writers; a read is a few microseconds).
- SQLite writes go to one writer thread that **group-commits**: every write queued
  while the previous commit was syncing runs in the next transaction, each in its
  own savepoint, and all of them become durable with one `synchronous=FULL` commit
  before any caller hears back. Durability is kept; the fsync is shared. Writers of
  all processes (and the SQLAlchemy writer of this one) queue on the same file lock.
- PostgreSQL runs every unit on a pool of threads, one connection each; PostgreSQL
  shares the WAL flush of concurrent commits itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row

from acme_ca.storage.nonce_log import SqliteNonceLog
from acme_ca.storage.sqlite import LOCK_WAIT_SECONDS, connect_sqlite, lock_with_deadline

__all__ = ["Database", "IntegrityError", "Row", "Sql"]

T = TypeVar("T")
Row = Any
"""A row read by name (`row["id"]`): `sqlite3.Row` or psycopg's dict row."""

IntegrityError: tuple[type[Exception], ...] = (sqlite3.IntegrityError, psycopg.IntegrityError)

_MAX_BATCH = 256


class Sql:
    """One DBAPI connection for the length of one unit of work."""

    __slots__ = ("_conn", "postgres")

    def __init__(self, conn: Any, *, postgres: bool) -> None:
        self._conn = conn
        self.postgres = postgres

    def _text(self, sql: str) -> str:
        return _pg_text(sql) if self.postgres else sql

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return self._conn.execute(self._text(sql), params).fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(self._conn.execute(self._text(sql), params).fetchall())

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute; the number of rows changed."""
        rowcount: int = self._conn.execute(self._text(sql), params).rowcount
        return rowcount

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self.postgres:
            with self._conn.cursor() as cursor:
                cursor.executemany(_pg_text(sql), rows)
        else:
            self._conn.executemany(sql, rows)


_PG_TEXT: dict[str, str] = {}


def _pg_text(sql: str) -> str:
    text = _PG_TEXT.get(sql)
    if text is None:
        # The store's SQL has no literal '?' or '%': placeholders are the only ones.
        assert "%" not in sql
        text = _PG_TEXT[sql] = sql.replace("?", "%s")
    return text


_Item = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any], asyncio.AbstractEventLoop]


class _GroupWriter:
    """The SQLite writer thread: batches queued writes into one durable commit."""

    def __init__(self, path: str, *, synchronous: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock_fd = os.open(f"{path}.writelock", os.O_RDWR | os.O_CREAT, 0o600)
        self._conn: sqlite3.Connection | None = None
        self._thread = threading.Thread(target=self._loop, name="acme-db-writer", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], args: tuple[Any, ...]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, args, future, loop))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=LOCK_WAIT_SECONDS + 5)
        os.close(self._lock_fd)

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < _MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            _deliver(self._run_batch(batch), batch)
        if self._conn is not None:
            self._conn.close()

    def _run_batch(self, batch: list[_Item]) -> list[tuple[bool, Any]]:
        try:
            if self._conn is None:
                self._conn = connect_sqlite(self._path, synchronous=self._synchronous)
            conn = self._conn
            lock_with_deadline(self._lock_fd, LOCK_WAIT_SECONDS)
        except BaseException as exc:
            return [(False, exc)] * len(batch)
        try:
            sql = Sql(conn, postgres=False)
            conn.execute("BEGIN IMMEDIATE")
            outcomes: list[tuple[bool, Any]] = []
            if len(batch) == 1:
                fn, args, _, _ = batch[0]
                outcomes.append((True, fn(sql, *args)))
            else:
                for fn, args, _, _ in batch:
                    # Each write in its own savepoint: one that fails leaves no trace
                    # and does not undo the others.
                    conn.execute("SAVEPOINT unit")
                    try:
                        outcomes.append((True, fn(sql, *args)))
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
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)


def _deliver(outcomes: list[tuple[bool, Any]], batch: list[_Item]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for (ok, value), (_, _, future, loop) in zip(outcomes, batch, strict=True):
        by_loop.setdefault(loop, []).append((future, ok, value))
    for loop, results in by_loop.items():
        # A closed loop raises RuntimeError: nobody is waiting there.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, results)


def _resolve(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in results:
        if future.done():
            continue
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
        self._reader: sqlite3.Connection | None = None
        self._writer: _GroupWriter | None = None
        self._sqlite_path = sqlite_path
        self._synchronous = sqlite_synchronous
        self._dsn = postgres_dsn
        self._pool: queue.SimpleQueue[psycopg.Connection[Any]] = queue.SimpleQueue()
        self._all: list[psycopg.Connection[Any]] = []
        self._pool_lock = threading.Lock()
        self._pool_size = pool_size
        self._slots = asyncio.Semaphore(pool_size)
        self._executor = (
            ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="acme-pg")
            if self.postgres
            else None
        )
        self.nonce_log: SqliteNonceLog | None = None
        if sqlite_path is not None:
            self._writer = _GroupWriter(sqlite_path, synchronous=sqlite_synchronous)
            self.nonce_log = SqliteNonceLog(sqlite_path)

    # ---- SQLite ------------------------------------------------------------------

    def _sqlite_reader(self) -> sqlite3.Connection:
        if self._reader is None:
            assert self._sqlite_path is not None
            self._reader = connect_sqlite(self._sqlite_path, synchronous=self._synchronous)
        return self._reader

    # ---- PostgreSQL --------------------------------------------------------------

    def _checkout(self) -> psycopg.Connection[Any]:
        try:
            conn = self._pool.get_nowait()
        except queue.Empty:
            assert self._dsn is not None
            conn = psycopg.connect(self._dsn, autocommit=True, row_factory=dict_row)
            with self._pool_lock:
                self._all.append(conn)
            return conn
        if conn.closed or conn.broken:
            with self._pool_lock:
                self._all.remove(conn)
            return self._checkout()
        return conn

    def _pg_unit(self, fn: Callable[..., T], args: tuple[Any, ...], *, write: bool) -> T:
        conn = self._checkout()
        try:
            sql = Sql(conn, postgres=True)
            if not write:
                return fn(sql, *args)
            with conn.transaction():
                return fn(sql, *args)
        except psycopg.OperationalError:
            # A broken connection is dropped, not pooled again.
            with self._pool_lock:
                if conn in self._all:
                    self._all.remove(conn)
            conn.close()
            raise
        finally:
            if not conn.closed:
                self._pool.put(conn)

    async def _on_pool(self, fn: Callable[..., T], args: tuple[Any, ...], *, write: bool) -> T:
        async with self._slots:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, lambda: self._pg_unit(fn, args, write=write)
            )

    # ---- the API -----------------------------------------------------------------

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(sql, *args)` on a connection; several statements see one snapshot."""
        if self.postgres:
            return await self._on_pool(fn, args, write=False)
        conn = self._sqlite_reader()
        return fn(Sql(conn, postgres=False), *args)

    async def read_consistent(self, fn: Callable[..., T], *args: Any) -> T:
        """Like `read`, inside one read transaction (one snapshot for all statements)."""
        if self.postgres:
            return await self._on_pool(fn, args, write=True)
        conn = self._sqlite_reader()
        conn.execute("BEGIN")
        try:
            return fn(Sql(conn, postgres=False), *args)
        finally:
            conn.execute("COMMIT")

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(sql, *args)` in a transaction, durable when this returns; all or nothing."""
        if self._writer is not None:
            return await self._writer.submit(fn, args)
        return await self._on_pool(fn, args, write=True)

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._writer.close)
            self._writer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self.nonce_log is not None:
            self.nonce_log.close()
        with self._pool_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False)

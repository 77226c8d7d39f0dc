"""Async access to synchronous SQLAlchemy engines, without per-statement greenlets.

Measured on the 2-core reference machine, a primary-key SELECT costs about 410 µs
of CPU through SQLAlchemy's asyncio extension with aiosqlite (a greenlet switch and
a thread hop per statement) and about 45 µs through the synchronous engine. So the
store runs the synchronous engine and decides per engine where statements run:

- inline, on the event-loop thread: SQLite readers (WAL readers never wait on
  locks; a read is tens of microseconds);
- on a dedicated executor: the SQLite writer (one thread, so in-process writes
  queue instead of spinning on the file lock, and fsync never blocks the loop) and
  PostgreSQL (a pool of threads, one per pooled connection).

The API mirrors the parts of `sqlalchemy.ext.asyncio` the store uses, so call sites
read the same: `async with engine.begin() as conn: await conn.execute(stmt)`.
Results are buffered in the executor thread before they reach the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Engine, Row
from sqlalchemy.engine import Connection as SyncConnection
from sqlalchemy.exc import MultipleResultsFound, NoResultFound
from sqlalchemy.sql import Executable

__all__ = ["AsyncishConnection", "AsyncishEngine", "BufferedResult"]

T = TypeVar("T")


class BufferedResult:
    """The rows (if any) and rowcount of one statement, read in full."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: Sequence[Row[Any]], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def first(self) -> Row[Any] | None:
        return self._rows[0] if self._rows else None

    def all(self) -> Sequence[Row[Any]]:
        return self._rows

    def scalar_one(self) -> Any:
        if len(self._rows) != 1:
            raise NoResultFound() if not self._rows else MultipleResultsFound()
        return self._rows[0][0]

    def scalar_one_or_none(self) -> Any:
        if len(self._rows) > 1:
            raise MultipleResultsFound()
        return self._rows[0][0] if self._rows else None

    def scalars(self) -> list[Any]:
        return [row[0] for row in self._rows]


def _execute(conn: SyncConnection, statement: Executable, params: Any) -> BufferedResult:
    result = conn.execute(statement, params) if params is not None else conn.execute(statement)
    rows = result.all() if result.returns_rows else ()
    return BufferedResult(rows, result.rowcount if not result.returns_rows else len(rows))


class AsyncishConnection:
    def __init__(self, engine: AsyncishEngine, conn: SyncConnection) -> None:
        self._engine = engine
        self.sync_connection = conn

    async def execute(self, statement: Executable, params: Any = None) -> BufferedResult:
        return await self._engine.call(_execute, self.sync_connection, statement, params)

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._engine.call(fn, self.sync_connection, *args)


class AsyncishEngine:
    """A synchronous engine whose work runs inline or on its own threads."""

    def __init__(self, engine: Engine, *, threads: int, connections: int) -> None:
        self.sync_engine = engine
        # Connections are handed out here, before any thread is involved: a thread
        # that blocked in the pool's checkout could wait forever on a connection
        # whose owner needs that same thread to finish its transaction.
        self._slots = asyncio.Semaphore(connections)
        self._executor = (
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="acme-db")
            if threads > 0
            else None
        )

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            return fn(*args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncishConnection]:
        """A connection in autocommit-free read use; rolled back when released."""
        async with self._slots:
            conn = await self.call(self.sync_engine.connect)
            try:
                yield AsyncishConnection(self, conn)
            finally:
                await self.call(conn.close)

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncishConnection]:
        """A transaction: committed when the block ends, rolled back if it raises."""
        async with self._slots:
            conn = await self.call(_open_transaction, self.sync_engine)
            try:
                yield AsyncishConnection(self, conn)
            except BaseException:
                await self.call(_rollback_and_close, conn)
                raise
            await self.call(_commit_and_close, conn)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(sync_connection, *args)` on a pooled connection, in one executor hop."""
        async with self._slots:
            return await self.call(_on_connection, self.sync_engine, fn, args)

    async def transaction(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(sync_connection, *args)` in one transaction, in one executor hop.

        For short hot-path writes: `begin()` costs a hop per statement.
        """
        async with self._slots:
            return await self.call(_in_transaction, self.sync_engine, fn, args)

    async def dispose(self) -> None:
        await self.call(self.sync_engine.dispose)
        if self._executor is not None:
            self._executor.shutdown(wait=False)


def _open_transaction(engine: Engine) -> SyncConnection:
    conn = engine.connect()
    try:
        conn.begin()
    except BaseException:
        conn.close()
        raise
    return conn


def _on_connection(engine: Engine, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    with engine.connect() as conn:
        return fn(conn, *args)


def _in_transaction(engine: Engine, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    conn = _open_transaction(engine)
    try:
        result = fn(conn, *args)
    except BaseException:
        _rollback_and_close(conn)
        raise
    _commit_and_close(conn)
    return result


def _commit_and_close(conn: SyncConnection) -> None:
    try:
        conn.commit()
    finally:
        conn.close()


def _rollback_and_close(conn: SyncConnection) -> None:
    try:
        conn.rollback()
    finally:
        conn.close()

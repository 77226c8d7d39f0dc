"""Client CPU per statement: psycopg in pipeline mode (as storage/database.py runs
transactions) against asyncpg (as it runs reads and single statements).

usage: .venv/bin/python benchmarks/pg_drivers.py [--dsn postgresql://postgres@127.0.0.1:5432/test]
           [--statements 4000] [--concurrency 4,8]
Creates and drops its own table (`pg_drivers_bench`). Figures: CPU of this process
per statement (getrusage), and wall time per statement over all connections.
"""

# S608: the table name is this module's constant, never input.
# ruff: noqa: S608

from __future__ import annotations

import argparse
import asyncio
import itertools
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import psycopg
import uvloop
from psycopg.rows import dict_row

_TABLE = "pg_drivers_bench"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(
    label: str, conc: int, total: int, fn: Callable[[Any], Awaitable[None]], conns: list[Any]
) -> None:
    async def worker(conn: Any) -> None:
        for _ in range(total // conc):
            await fn(conn)

    cpu, wall = _cpu(), time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    cpu_us = 1e6 * (_cpu() - cpu) / total
    wall_us = 1e6 * (time.perf_counter() - wall) / total
    print(f"{label:26s} concurrency {conc}: {cpu_us:5.0f} µs CPU, {wall_us:5.0f} µs wall each")


async def main(dsn: str, total: int, levels: list[int]) -> None:
    keys = itertools.count()
    admin = await asyncpg.connect(dsn)
    await admin.execute(f"DROP TABLE IF EXISTS {_TABLE}")
    await admin.execute(f"CREATE TABLE {_TABLE} (k text PRIMARY KEY, a bigint, b text, c boolean)")
    await admin.execute(f"INSERT INTO {_TABLE} VALUES ('row', 1, 'x', true)")
    try:
        for conc in levels:
            pipelined = []
            for _ in range(conc):
                conn = await psycopg.AsyncConnection.connect(
                    dsn, autocommit=True, row_factory=dict_row
                )
                pipeline = psycopg.AsyncPipeline(conn)
                conn._pipeline = pipeline
                await pipeline.__aenter__()
                pipelined.append((conn, pipeline))

            async def psycopg_select(cp: Any) -> None:
                conn, pipeline = cp
                cur = await conn.execute(f"SELECT k, a, b, c FROM {_TABLE} WHERE k = %s", ("row",))
                await pipeline.sync()
                await cur.fetchone()

            async def psycopg_insert(cp: Any) -> None:
                conn, pipeline = cp
                await conn.execute(
                    f"INSERT INTO {_TABLE} VALUES (%s, %s, %s, %s)",
                    (f"p{next(keys)}", 1, "x", True),
                )
                await pipeline.sync()

            await _measure("psycopg (pipeline) SELECT", conc, total, psycopg_select, pipelined)
            await _measure("psycopg (pipeline) INSERT", conc, total, psycopg_insert, pipelined)
            plain = [await asyncpg.connect(dsn) for _ in range(conc)]

            async def asyncpg_select(conn: Any) -> None:
                await conn.fetchrow(f"SELECT k, a, b, c FROM {_TABLE} WHERE k = $1", "row")

            async def asyncpg_insert(conn: Any) -> None:
                await conn.execute(
                    f"INSERT INTO {_TABLE} VALUES ($1, $2, $3, $4)", f"a{next(keys)}", 1, "x", True
                )

            await _measure("asyncpg SELECT", conc, total, asyncpg_select, plain)
            await _measure("asyncpg INSERT", conc, total, asyncpg_insert, plain)
            for conn, _ in pipelined:
                await conn.close()
            for conn in plain:
                await conn.close()
    finally:
        await admin.execute(f"DROP TABLE IF EXISTS {_TABLE}")
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--statements", type=int, default=4000)
    parser.add_argument("--concurrency", default="4,8")
    args = parser.parse_args()
    uvloop.run(main(args.dsn, args.statements, [int(c) for c in args.concurrency.split(",")]))

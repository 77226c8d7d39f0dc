"""Run `acme-ca serve` counting psycopg's round trips to PostgreSQL (a measuring aid).

usage: python benchmarks/pg_round_trips.py serve ... --database postgresql://...
       kill -USR1 <pid>   # writes the counts so far to $PG_ROUND_TRIPS (pg-round-trips.json)

Every wait of psycopg on the server is counted by the generator it runs: outside
pipeline mode each `_execute_gen` is one round trip; in pipeline mode statements
are only queued (`_execute_gen_pl`) and each `_sync_gen` (or `_exit_gen`, which
ends psycopg's own pipeline around `executemany`) is one. `round_trips` is their sum.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from types import FrameType
from typing import Any

import psycopg.waiting

_ROUND_TRIPS = {"_execute_gen", "_sync_gen", "_exit_gen"}
counts: Counter[str] = Counter()
_wait_async = psycopg.waiting.wait_async


async def _counting(gen: Any, *args: Any, **kwargs: Any) -> Any:
    name = getattr(getattr(gen, "gi_code", None), "co_name", "?")
    cursor = getattr(gen, "gi_frame", None) and gen.gi_frame.f_locals.get("self")
    if name == "_execute_gen" and cursor is not None and cursor._conn._pipeline is not None:
        name = "_execute_gen_pl"
    counts[name] += 1
    return await _wait_async(gen, *args, **kwargs)


def _dump(_signum: int, _frame: FrameType | None) -> None:
    report = dict(counts, round_trips=sum(n for k, n in counts.items() if k in _ROUND_TRIPS))
    with open(os.environ.get("PG_ROUND_TRIPS", "pg-round-trips.json"), "w") as out:
        json.dump(report, out)


if __name__ == "__main__":
    psycopg.waiting.wait_async = _counting  # type: ignore[assignment]
    signal.signal(signal.SIGUSR1, _dump)
    from acme_ca.cli import main

    sys.exit(main())

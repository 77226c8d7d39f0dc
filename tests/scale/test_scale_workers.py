"""`acme-ca serve --workers N` on the default SQLite database: N processes, one file.

SQLite serializes writers across processes with its file lock; the store's writer
starts every transaction with BEGIN IMMEDIATE and waits (busy_timeout) instead of
failing, so the workers take turns rather than erring with "database is locked".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.scale.conftest import Cluster
from tests.scale.scale_support import FlowResult, db_facts, run_flows

pytestmark = [pytest.mark.slow]

WORKERS = 3
ISSUANCES = 30


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


async def test_workers_share_one_sqlite_file(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'data' / 'acme-ca.db'}"
    cluster = cluster_factory(database)
    (server,) = await cluster.start(1, workers=WORKERS, log_level="info")
    assert server.proc is not None
    assert len(_children(server.proc.pid)) >= WORKERS

    # uvicorn's workers share the listening socket and the kernel hands each new
    # connection to one of them: a connection per request spreads the load.
    clients = [await cluster.client([server.port], keepalive=False) for _ in range(6)]
    names = [f"w{i}.workers.test" for i in range(ISSUANCES)]
    results = await run_flows(clients, names, cluster.challtestsrv)

    log = server.log.read_text(errors="replace")
    failures = [r for r in results if not isinstance(r, FlowResult) or r.status != "valid"]
    assert not failures, f"{failures}\n{cluster.logs_tail()}"
    assert "database is locked" not in log
    facts = db_facts(database)
    assert len(facts["certificates"]) == ISSUANCES
    assert facts["jobs"] == 0
    # The log format carries the PID: more than one worker issued.
    issuers = set(re.findall(r"^\S+ \S+ (\d+) acme_ca\.ra\.issuance issued", log, re.MULTILINE))
    assert len(issuers) >= 2, issuers

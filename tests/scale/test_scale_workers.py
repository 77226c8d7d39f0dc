"""`acme-ca serve --workers N` on the default SQLite database: N processes, one file.

SQLite serializes writers across processes with its file lock; the store's writer
starts every transaction with BEGIN IMMEDIATE and waits (busy_timeout) instead of
failing, so the workers take turns rather than erring with "database is locked".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.scale.conftest import Cluster
from tests.scale.scale_support import LOOPBACK, FlowResult, db_facts, run_flows, tls_context

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


def _workers(pid: int) -> list[int]:
    """The serving workers among the supervisor's children (not the resource tracker)."""
    found = []
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            found.append(child)
    return found


async def test_connections_waiting_for_a_dead_worker_are_answered_by_its_replacement(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    """The supervisor keeps its copy of a handed connection until the worker takes it:
    connections handed to a worker that stopped and then died are answered by the other
    worker (with a listening socket per worker, those in its backlog were reset)."""
    database = f"sqlite:///{tmp_path / 'data' / 'acme-ca.db'}"
    cluster = cluster_factory(database)
    (server,) = await cluster.start(1, workers=2)
    assert server.proc is not None
    workers = _workers(server.proc.pid)
    assert len(workers) == 2
    victim = workers[0]
    os.kill(victim, signal.SIGSTOP)  # it accepts nothing from now on
    try:
        # A connection per request, none retried, all at once: about half of them are
        # handed to the stopped worker before it has acknowledged any.
        http = httpx.AsyncClient(
            verify=tls_context(cluster.data_dir),
            limits=httpx.Limits(max_keepalive_connections=0),
            timeout=60,
        )
        url = f"https://{LOOPBACK}:{server.port}/directory"
        pending = [asyncio.create_task(http.get(url)) for _ in range(24)]
        await asyncio.sleep(1.0)
        answered_early = sum(task.done() for task in pending)
        assert answered_early < len(pending), "no connection waited for the stopped worker"
    finally:
        os.kill(victim, signal.SIGKILL)
    try:
        responses = await asyncio.wait_for(asyncio.gather(*pending), timeout=60)
    finally:
        await http.aclose()
    assert [r.status_code for r in responses] == [200] * len(pending)
    assert victim not in _workers(server.proc.pid)


async def test_connections_are_spread_evenly_over_workers(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    """Each new connection goes to the worker with the fewest open ones: 8 keep-alive
    connections opened at once are served 4 and 4 (a hash of the address, as with a
    socket per worker, split them 6-2 or worse a third of the time)."""
    database = f"sqlite:///{tmp_path / 'data' / 'acme-ca.db'}"
    cluster = cluster_factory(database)
    (server,) = await cluster.start(1, workers=2)
    assert server.proc is not None
    url = f"https://{LOOPBACK}:{server.port}/directory"
    peers: list[int] = []
    clients = [
        httpx.AsyncClient(verify=tls_context(cluster.data_dir), timeout=30) for _ in range(8)
    ]
    try:
        # One connection per client, kept open: every client's requests share it.
        await asyncio.gather(*(c.get(url) for c in clients))
        for _ in range(3):
            await asyncio.gather(*(c.get(url) for c in clients))
        for worker in _workers(server.proc.pid):
            peers.append(_established_connections(worker, server.port))
    finally:
        for client in clients:
            await client.aclose()
    assert sorted(peers) == [4, 4], peers


def _established_connections(pid: int, port: int) -> int:
    """TCP connections of process `pid` established on local `port`."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "01" and fields[9] in inodes:
            count += 1
    return count

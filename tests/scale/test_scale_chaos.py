"""Chaos: SIGKILL and restart `acme-ca serve` processes at random under a bounded load.

Killing a process loses whatever it had in flight: a validation, an issuance, a
response. The database must still tell a clean story afterwards (DESIGN.md, State and
scale): every order the client drove ended valid or invalid, every valid order has
its one certificate, no order got two, and no job or `processing` state is left.
Stale leases are short here (`--job-lease-seconds 2`) so that recovery is quick.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from cryptography import x509
from sqlalchemy.engine import make_url

from acme_ca.bench.client import AcmeClient, build_csr
from acme_ca.bench.jws import generate_key
from tests.scale.conftest import Cluster
from tests.scale.scale_support import (
    FlowResult,
    ServerProcess,
    SlowHttp01Responder,
    db_facts,
    run_flows,
)

pytestmark = [pytest.mark.slow]

ORDERS = 40
CLIENTS = 8
LOAD_SECONDS = 60.0  # chaos stops after this even if flows are still running
FLOW_TIMEOUT = 150.0  # a flow may wait out leases of processes killed under it
SETTLE_SECONDS = 90.0
VALIDATION_DELAY = 0.7  # so that kills land on validations in flight


async def _chaos(
    servers: list[ServerProcess], rng: random.Random, stop: asyncio.Event, log: list[str]
) -> None:
    """Kill one live process every 0.5-2 s, restart it 0.2-1 s later; one always stays up."""
    deadline = time.monotonic() + LOAD_SECONDS
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            await asyncio.wait_for(stop.wait(), timeout=rng.uniform(0.5, 2.0))
        except TimeoutError:
            pass
        else:
            return
        alive = [s for s in servers if s.alive]
        if len(alive) < 2:
            continue
        victim = rng.choice(alive)
        victim.kill()
        log.append(f"{time.monotonic():.1f} kill {victim.name}")
        await asyncio.sleep(rng.uniform(0.2, 1.0))
        victim.start()


@pytest.mark.postgres
async def test_sigkill_and_restart_under_load(cluster: Cluster) -> None:
    await _sigkill_and_restart(cluster)


async def test_sigkill_and_restart_under_load_on_sqlite(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    """The embedded default: three processes on one SQLite file (what `--workers` and
    several `serve` on one host do), killed at random under load. The group commit, the
    nonce side file and the job leases must tell the same clean story as PostgreSQL."""
    await _sigkill_and_restart(cluster_factory(f"sqlite:///{tmp_path / 'data' / 'acme-ca.db'}"))


async def _sigkill_and_restart(cluster: Cluster) -> None:
    seed = int(os.environ.get("ACME_CA_CHAOS_SEED", time.time_ns() % 1_000_000))
    responder = SlowHttp01Responder(VALIDATION_DELAY)
    await responder.start()
    try:
        servers = await cluster.start(
            3, job_lease_seconds=2, log_level="info", http01_port=responder.port
        )
        await _load_with_chaos(cluster, servers, responder, seed)
    finally:
        await responder.stop()


async def _load_with_chaos(
    cluster: Cluster, servers: list[ServerProcess], responder: SlowHttp01Responder, seed: int
) -> None:
    rng = random.Random(seed)
    ports = [s.port for s in servers]
    clients = [await cluster.client(ports, offset=i % 3) for i in range(CLIENTS)]

    stop = asyncio.Event()
    kills: list[str] = []
    chaos = asyncio.create_task(_chaos(servers, rng, stop, kills))
    try:
        results = await run_flows(
            clients,
            [f"chaos{i}.scale.test" for i in range(ORDERS)],
            responder,
            pause=1.0,
            tolerate_failures=True,
            timeout=FLOW_TIMEOUT,
        )
    finally:
        stop.set()
        await chaos
    for server in servers:
        if not server.alive:
            server.start()
    for server in servers:
        await server.wait_ready()

    context = f"seed={seed} kills={kills}\n{cluster.logs_tail()}"
    assert len(kills) >= 3, context
    errors = [r for r in results if not isinstance(r, FlowResult)]
    assert not errors, f"{errors}\n{context}"
    flows = [r for r in results if isinstance(r, FlowResult)]
    assert len(flows) == ORDERS
    assert all(r.status in ("valid", "invalid") for r in flows), context

    # Whatever a killed process left behind is taken up by the others within a lease.
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        facts = db_facts(cluster.database)
        settled = facts["jobs"] == 0 and facts["processing_challenges"] == 0
        if (settled and facts["processing_orders"] == 0) or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    assert facts["jobs"] == 0, context
    assert facts["processing_orders"] == 0, context
    assert facts["processing_challenges"] == 0, context
    assert facts["certificates_per_order_max"] <= 1
    assert facts["duplicate_serials"] == 0

    orders: dict[str, tuple[str, str | None]] = facts["orders"]
    certificates: dict[str, str] = facts["certificates"]
    driven = {r.order_url.rsplit("/", 1)[-1] for r in flows if r.order_url}
    for order_id, (status, certificate_id) in orders.items():
        if order_id in driven:
            assert status in ("valid", "invalid"), (order_id, status, context)
        else:
            # An order whose newOrder response was lost with its process: the client
            # made another, so nobody drives this one further. It is never half-done.
            assert status in ("pending", "ready"), (order_id, status, context)
        if status == "valid":
            assert certificate_id is not None
            assert certificates[order_id] == certificate_id
        else:
            assert order_id not in certificates
    valid = sum(r.status == "valid" for r in flows)
    retried = sum(r.retries for r in flows)
    resumed = sum(s.log.read_text(errors="replace").count("resuming ") for s in servers)
    print(
        f"chaos seed={seed}: {len(kills)} kills, {valid}/{ORDERS} valid,"
        f" {retried} client retries, {resumed} jobs taken up after a kill"
    )


@pytest.mark.postgres
async def test_an_issuance_killed_midway_is_finished_by_another_process(cluster: Cluster) -> None:
    """SIGKILL a process inside `finish_issuance`, deterministically: the test holds
    an EXCLUSIVE lock on `certificates`, so the process stops at its INSERT with the
    order already `processing` and its issuance job queued. Its transaction dies with
    it; another process takes the job up after the lease, with the same serial.

    The statements of `finish_issuance` reach PostgreSQL in one pipeline with the Sync
    that commits them, so a backend that outlives its client would commit them once
    the lock is released (as if the process had died just after its COMMIT, which is
    also safe); the test ends that backend as the client's death would end it with
    `client_connection_check_interval`."""
    a, b = await cluster.start(2, job_lease_seconds=2, log_level="info")
    at_a = await cluster.client([a.port])
    order = await run_flow_until_ready(at_a, cluster)
    at_b = AcmeClient(
        at_a.directory_url, account_key=at_a.key, kid=at_a.kid, http=cluster.http([b.port])
    )

    with psycopg.connect(pg_dsn(cluster.database)) as lock:
        lock.execute("LOCK TABLE certificates IN EXCLUSIVE MODE")
        csr = build_csr(generate_key("p256"), [order.name])
        finalize = asyncio.create_task(at_a.finalize(order.finalize_url, csr))
        blocked = await _wait_for_blocked_insert(cluster.database, finalize)
        a.kill()
        _terminate_backend(cluster.database, blocked)
        lock.rollback()
    with pytest.raises(httpx.TransportError):
        await finalize

    serial_at_finalize = _order_serial(cluster.database, order.id)
    final = await at_b.poll(order.url, until={"valid"}, timeout=30, max_delay=0.5)
    pem = (await at_b.download_certificate(final.body["certificate"])).content
    leaf = x509.load_pem_x509_certificates(pem)[0]
    assert format(leaf.serial_number, "x") == serial_at_finalize
    facts = db_facts(cluster.database)
    assert facts["jobs"] == 0
    assert facts["certificates"] == {order.id: final.body["certificate"].rsplit("/", 1)[-1]}
    assert "resuming issue job" in b.log.read_text(errors="replace")


@dataclass(frozen=True, slots=True)
class ReadyOrder:
    name: str
    url: str
    finalize_url: str

    @property
    def id(self) -> str:
        return self.url.rsplit("/", 1)[-1]


async def run_flow_until_ready(client: AcmeClient, cluster: Cluster) -> ReadyOrder:
    name = "killed-in-issuance.scale.test"
    order = await client.new_order([name])
    assert order.location is not None
    for authz_url in order.body["authorizations"]:
        authz = (await client.post_as_get(authz_url)).body
        chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
        cluster.challtestsrv.add_http01(chall["token"], client.key_authorization(chall["token"]))
        await client.respond_challenge(chall["url"])
    await client.poll(order.location, until={"ready"}, timeout=20, max_delay=0.5)
    return ReadyOrder(name, order.location, order.body["finalize"])


def pg_dsn(database: str) -> str:
    return make_url(database).set(drivername="postgresql").render_as_string(hide_password=False)


async def _wait_for_blocked_insert(database: str, finalize: asyncio.Task[object]) -> int:
    """Until a server connection waits on our lock with its certificate INSERT; its pid."""
    name = make_url(database).database
    deadline = time.monotonic() + 20
    with psycopg.connect(pg_dsn(database), autocommit=True) as conn:
        while time.monotonic() < deadline:
            assert not finalize.done(), finalize
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s"
                # The certificate INSERT is one part of the issuance's single statement.
                " AND wait_event_type = 'Lock' AND query LIKE '%%INSERT INTO certificates%%'",
                (name,),
            ).fetchone()
            if row is not None:
                return int(row[0])
            await asyncio.sleep(0.05)
    raise TimeoutError("no issuance reached the certificate INSERT")


def _terminate_backend(database: str, pid: int) -> None:
    with psycopg.connect(pg_dsn(database), autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _order_serial(database: str, order_id: str) -> str:
    with psycopg.connect(pg_dsn(database)) as conn:
        row = conn.execute("SELECT serial FROM orders WHERE id = %s", (order_id,)).fetchone()
    assert row is not None
    assert row[0] is not None
    return str(row[0])

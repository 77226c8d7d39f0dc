"""/metrics of a real `acme-ca serve`: one scrape counts what every process did.

Each test starts a server on SQLite with `--metrics-listen` on a free loopback port,
issues certificates through it, and reads the metrics listener as Prometheus would.
With `--workers 2` the issuances land on both workers (two keep-alive clients, one
connection each, handed one to each worker) and the scrape adds both up; a worker
killed with SIGKILL leaves the open-connections gauge (the supervisor marks it dead)
and keeps its counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.scale.conftest import Cluster
from tests.scale.scale_support import (
    EXTERNAL_URL,
    LOOPBACK,
    FlowResult,
    ServerProcess,
    run_flows,
    tls_context,
)

pytestmark = [pytest.mark.slow]

ISSUANCES = 4
ROUTE_NAMES = {
    "directory", "newNonce", "terms", "newAccount", "account", "orders", "keyChange",
    "newOrder", "newAuthz", "order", "finalize", "authz", "challenge", "certificate",
    "revokeCert", "renewalInfo", "openapi", "unknown",
}  # fmt: skip
# Paths and a method no label may carry.
ODD_PATHS = (
    "/acme/order/no-such-order-1234",
    "/no/such/resource",
    "/acme/cert/abc/notanumber",
    "/directory/",
    "/metrics",
)
Samples = list[tuple[str, dict[str, str], float]]


async def scrape(port: int) -> tuple[httpx.Response, Samples]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"http://{LOOPBACK}:{port}/metrics")
    samples = [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    ]
    return response, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(
        v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items())
    )


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {ls[label] for n, ls, _ in samples if n == name and label in ls}


def _run_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("acme-ca-metrics-*"))


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The servers' TMPDIR (inherited), where `serve` makes its metrics directory."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    return tmp


def _workers(pid: int) -> list[int]:
    """The serving workers among the supervisor's children (not the resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


async def _issue(cluster: Cluster, server: ServerProcess, clients: int) -> None:
    # Keep-alive clients: one connection each, which the supervisor hands to the worker
    # with the fewest open (so with two workers, one client's requests go to each).
    accounts = [await cluster.client([server.port]) for _ in range(clients)]
    names = [f"m{i}.metrics.test" for i in range(ISSUANCES)]
    results = await run_flows(accounts, names, cluster.challtestsrv)
    failures = [r for r in results if not isinstance(r, FlowResult) or r.status != "valid"]
    assert not failures, f"{failures}\n{cluster.logs_tail()}"


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_scrape_counts_what_every_worker_did(
    cluster_factory: Callable[..., Cluster], tmp_path: Path, private_tmp: Path, workers: int
) -> None:
    cluster = cluster_factory(f"sqlite:///{tmp_path / 'data' / 'acme-ca.db'}")
    (server,) = await cluster.start(1, workers=workers, log_level="info")
    (run_dir,) = _run_dirs(private_tmp)
    await _issue(cluster, server, clients=2)
    odd = cluster.http([server.port])
    for path in ODD_PATHS:
        await odd.get(f"{EXTERNAL_URL}{path}")
    await odd.request("PURGE", f"{EXTERNAL_URL}/acme/new-order")
    answered = sum(len(t.served) for t in cluster.transports)

    response, samples = await scrape(server.metrics_port)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")

    assert value(samples, "acme_ca_certificates_issued_total", profile="classic") == ISSUANCES
    assert value(samples, "acme_ca_orders_finalized_total", result="valid") == ISSUANCES
    assert value(samples, "acme_ca_orders_finalized_total", result="invalid") == 0
    assert (
        value(samples, "acme_ca_validations_total", challenge_type="http-01", result="valid")
        == ISSUANCES
    )
    assert value(samples, "acme_ca_validation_duration_seconds_count") == ISSUANCES
    assert value(samples, "acme_ca_accounts_created_total") == 2
    assert value(samples, "acme_ca_caa_check_failures_total") == 0
    finalized = value(
        samples, "acme_ca_http_requests_total", endpoint="finalize", method="POST", code="200"
    )
    assert finalized == ISSUANCES
    assert value(samples, "acme_ca_http_requests_total", endpoint="newAccount", code="201") == 2
    assert value(samples, "acme_ca_http_request_duration_seconds_count", endpoint="finalize") == (
        ISSUANCES
    )
    # Every answer through the clients is counted (and the readiness probe's one GET).
    assert value(samples, "acme_ca_http_requests_total") == answered + 1

    # Bounded labels: route names, four methods, no path, no ID.
    assert label_values(samples, "acme_ca_http_requests_total", "endpoint") <= ROUTE_NAMES
    assert value(samples, "acme_ca_http_requests_total", endpoint="unknown", code="404") == 4
    methods = label_values(samples, "acme_ca_http_requests_total", "method")
    assert "other" in methods
    assert methods <= {"GET", "HEAD", "POST", "other"}
    # A GET of an order's URL is a known route with the wrong method: its name, a 405.
    assert value(samples, "acme_ca_http_requests_total", endpoint="order", code="405") == 1
    assert value(samples, "acme_ca_http_requests_total", endpoint="newOrder", method="other") == 1
    assert value(samples, "acme_ca_problems_total", type="notFound") >= 4
    assert value(samples, "acme_ca_problems_total", type="methodNotAllowed") == 2
    for _, labels, _ in samples:
        for label in labels.values():
            assert "/" not in label
            assert "no-such" not in label
            assert "notanumber" not in label
            assert "metrics.test" not in label

    assert value(samples, "acme_ca_connections_open", listener="metrics") >= 1
    assert ("acme_ca_connections_refused_total", {"listener": "acme"}, 0.0) in samples
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "process_resident_memory_bytes") > 0
    if workers == 2:
        # Issued by both workers (their PIDs in the log), counted in one scrape.
        log = server.log.read_text(errors="replace")
        issuers = re.findall(r"^\S+ \S+ (\d+) acme_ca\.ra\.issuance issued", log, re.MULTILINE)
        assert len(set(issuers)) == 2, issuers
        assert label_values(samples, "process_cpu_seconds_total", "worker") == {"0", "1"}
    else:
        assert not label_values(samples, "process_cpu_seconds_total", "worker")

    server.stop()
    assert not run_dir.exists()


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(1), 0.5)
    except TimeoutError:
        return False
    except (OSError, ssl.SSLError):
        return True
    return data == b""


async def _until(port: int, check: Callable[[Samples], bool], within: float = 20.0) -> Samples:
    """Scrape until `check` holds (the supervisor notices a death within its 0.5 s turn)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        _, samples = await scrape(port)
        if check(samples) or asyncio.get_running_loop().time() > deadline:
            return samples
        await asyncio.sleep(0.2)


async def test_a_dead_worker_leaves_the_gauge_and_keeps_its_counts(
    cluster_factory: Callable[..., Cluster], tmp_path: Path, private_tmp: Path
) -> None:
    cluster = cluster_factory(f"sqlite:///{tmp_path / 'data' / 'acme-ca.db'}")
    (server,) = await cluster.start(1, workers=2, extra_args=("--keep-alive-timeout", "60"))
    assert server.proc is not None
    await _issue(cluster, server, clients=2)
    for http in cluster.https:
        await http.aclose()  # only the idle connections below stay open
    context = tls_context(cluster.data_dir)
    idle = [await asyncio.open_connection(LOOPBACK, server.port, ssl=context) for _ in range(6)]
    try:
        before = await _until(
            server.metrics_port,
            lambda s: value(s, "acme_ca_connections_open", listener="acme") == 6,
        )
        assert value(before, "acme_ca_connections_open", listener="acme") == 6
        requests = value(before, "acme_ca_http_requests_total")

        victim = _workers(server.proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        await asyncio.sleep(0.5)
        alive = [not await _closed(reader) for reader, _ in idle]
        assert 0 < sum(alive) < 6, alive  # the victim had its share of them
        after = await _until(
            server.metrics_port,
            lambda s: (
                value(s, "acme_ca_worker_restarts_total") == 1
                and value(s, "acme_ca_connections_open", listener="acme") == sum(alive)
                and label_values(s, "process_cpu_seconds_total", "worker") == {"0", "1"}
            ),
        )
        assert value(after, "acme_ca_worker_restarts_total") == 1
        assert value(after, "acme_ca_connections_open", listener="acme") == sum(alive)
        assert value(after, "acme_ca_certificates_issued_total") == ISSUANCES
        assert value(after, "acme_ca_http_requests_total") == requests
        assert label_values(after, "process_cpu_seconds_total", "worker") == {"0", "1"}
    finally:
        for _, writer in idle:
            with contextlib.suppress(Exception):
                writer.close()


async def test_no_metrics_records_and_serves_nothing(
    cluster_factory: Callable[..., Cluster], tmp_path: Path, private_tmp: Path
) -> None:
    cluster = cluster_factory(f"sqlite:///{tmp_path / 'data' / 'acme-ca.db'}")
    (server,) = await cluster.start(1, workers=2, extra_args=("--no-metrics",))
    await _issue(cluster, server, clients=1)
    assert _run_dirs(private_tmp) == []
    with pytest.raises(httpx.ConnectError):
        await scrape(server.metrics_port)

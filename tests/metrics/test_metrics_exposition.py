"""The exposition: one scrape adds up what every process wrote to the run's directory; a
process marked dead takes its gauges along and leaves its counts; process metrics come
for this process and, labelled, for each worker. The writers are real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from acme_ca.metrics.exposition import CONTENT_TYPE, MetricsExporter, metrics_app

_WRITER = textwrap.dedent(
    """
    import sys
    from acme_ca.metrics.recorder import PrometheusMetrics

    metrics = PrometheusMetrics()
    for _ in range(int(sys.argv[1])):
        metrics.request("newOrder", "POST", 201, None, 0.01)
    metrics.listener("acme").opened()
    metrics.certificate_issued("classic")
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes it
    """
)

Samples = list[tuple[str, dict[str, str], float]]


def _samples(text: str) -> Samples:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def _value(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items())
    )


def _workers(samples: Samples) -> set[str]:
    return {ls["worker"] for n, ls, _ in samples if n == "process_cpu_seconds_total" and ls}


@pytest.fixture
def writers(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for count in (3, 5)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


def test_a_scrape_adds_up_every_process(
    tmp_path: Path, writers: list[subprocess.Popen[str]]
) -> None:
    exporter = MetricsExporter(tmp_path)
    for index, proc in enumerate(writers):
        exporter.worker_started(index, proc.pid)
    samples = _samples(exporter.render().decode())
    requests = "acme_ca_http_requests_total"
    assert _value(samples, requests, endpoint="newOrder", method="POST", code="201") == 8
    assert _value(samples, "acme_ca_http_request_duration_seconds_count") == 8
    assert _value(samples, "acme_ca_certificates_issued_total", profile="classic") == 2
    assert _value(samples, "acme_ca_connections_open", listener="acme") == 2
    # The connection gauge carries no pid label: live processes are summed.
    assert all("pid" not in ls for n, ls, _ in samples if n == "acme_ca_connections_open")
    assert _workers(samples) == {"0", "1"}
    # This process's own, unlabelled, as every Prometheus client exports them.
    assert any(n == "process_cpu_seconds_total" and not ls for n, ls, _ in samples)

    # A worker dies; the supervisor marks it so.
    gone = writers[1]
    assert gone.stdin is not None
    gone.stdin.close()
    gone.wait(timeout=10)
    exporter.worker_exited(1, gone.pid)
    samples = _samples(exporter.render().decode())
    assert _value(samples, "acme_ca_connections_open", listener="acme") == 1
    assert _value(samples, requests, endpoint="newOrder") == 8  # its counts stay
    assert _value(samples, "acme_ca_certificates_issued_total") == 2
    assert _workers(samples) == {"0"}


async def test_the_app_answers_get_and_head_of_metrics_only(tmp_path: Path) -> None:
    app = metrics_app(MetricsExporter(tmp_path))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://metrics.test") as http:
        got = await http.get("/metrics")
        assert got.status_code == 200
        assert got.headers["content-type"] == CONTENT_TYPE
        assert "process_cpu_seconds_total" in got.text
        head = await http.head("/metrics")
        assert head.status_code == 200
        assert head.content == b""
        post = await http.post("/metrics")
        assert post.status_code == 405
        assert post.headers["allow"] == "GET, HEAD"
        assert (await http.get("/")).status_code == 404
        assert (await http.get("/metrics/x")).status_code == 404

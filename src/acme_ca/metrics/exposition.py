"""What the metrics listener answers: GET /metrics, in the Prometheus text format.

One scrape covers the whole `serve` run: the values of every process (the serving
process, or the supervisor and each worker) are added up from the run's directory by
prometheus_client's `MultiProcessCollector`: counters and histograms summed over all
processes that ever wrote (a dead worker's counts stay), the connection gauge over the
live ones (the supervisor marks a dead worker with `mark_process_dead`). The process
metrics (`process_*`) are read from /proc: unlabelled for the process answering, and
with `worker="<index>"` for each worker of a supervisor (the index is the worker's
place, 0..N-1, kept across restarts).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "METRICS_PATH", "MetricsExporter", "metrics_app"]

log = logging.getLogger(__name__)

# Every metric and label name here is a classic one, so what generate_latest writes is
# the 0.0.4 text format, which every Prometheus and scraper reads; recent
# prometheus_client versions label the same bytes 1.0.0 (CONTENT_TYPE_LATEST).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRICS_PATH = "/metrics"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _Processes(Collector):
    """The `process_*` families of this process and of each worker, merged."""

    def __init__(self) -> None:
        self._own = ProcessCollector(registry=None)
        self.workers: dict[int, tuple[int, ProcessCollector]] = {}
        """index -> (pid, its collector); replaced whole, never changed in place (the
        supervisor's thread writes it, the listener's thread reads it)."""

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        sources: list[tuple[dict[str, str], ProcessCollector]] = [({}, self._own)]
        sources += [({"worker": str(i)}, c) for i, (_, c) in sorted(self.workers.items())]
        for extra, collector in sources:
            # A worker that just died has no /proc entry: ProcessCollector yields
            # nothing for it.
            for family in collector.collect():
                merged = families.get(family.name)
                if merged is None:
                    merged = Metric(family.name, family.documentation, family.type, family.unit)
                    families[family.name] = merged
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, **extra}, sample.value)
        return list(families.values())


class MetricsExporter:
    """Renders one run's metrics from its directory (`acme_ca.metrics.run.begin`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._processes = _Processes()
        self._platform = PlatformCollector(registry=None)

    def worker_started(self, index: int, pid: int) -> None:
        collector = ProcessCollector(pid=lambda: pid, registry=None)
        self._processes.workers = {**self._processes.workers, index: (pid, collector)}

    def worker_exited(self, index: int, pid: int) -> None:
        """Drop the dead worker's live gauges (its connections); its counters stay."""
        # prometheus_client leaves its multiprocess helpers unannotated.
        mark_process_dead(pid, str(self.directory))  # type: ignore[no-untyped-call]
        workers = dict(self._processes.workers)
        current = workers.get(index)
        if current is not None and current[0] == pid:
            del workers[index]
        self._processes.workers = workers

    def render(self) -> bytes:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.directory))  # type: ignore[no-untyped-call]
        registry.register(self._processes)
        registry.register(self._platform)
        return generate_latest(registry)


def metrics_app(exporter: MetricsExporter) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI app of the metrics listener: GET (or HEAD) /metrics, nothing else."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"cache-control", b"no-store")]
        if scope["path"] != METRICS_PATH:
            status, body, kind = 404, b"not found; metrics are at /metrics\n", b"text/plain"
        elif scope["method"] not in ("GET", "HEAD"):
            status, body, kind = 405, b"method not allowed\n", b"text/plain"
            headers.append((b"allow", b"GET, HEAD"))
        else:
            try:
                status, body, kind = 200, exporter.render(), CONTENT_TYPE.encode()
            except Exception:
                log.exception("metrics could not be rendered")
                status, body, kind = 500, b"metrics could not be rendered\n", b"text/plain"
        headers += [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if scope["method"] == "HEAD":
            body = b""
        await send({"type": "http.response.body", "body": body})

    return app

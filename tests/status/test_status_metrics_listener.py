"""The metrics listener as `serve` runs it: beside the status listener, on its thread, with
the same bounds (an idle connection is closed at the request deadline), and stopped with it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from acme_ca.metrics.exposition import MetricsExporter, metrics_app
from acme_ca.service import AcmeService
from acme_ca.status import StatusListener, StatusSettings, bind_listener
from tests.status.test_status_server import _closed_after, _get


async def test_metrics_are_served_beside_the_status_listener(
    service: AcmeService, tmp_path: Path
) -> None:
    status_sock = bind_listener("127.0.0.1", 0)
    metrics_sock = bind_listener("127.0.0.1", 0)
    status_port = status_sock.getsockname()[1]
    metrics_port = metrics_sock.getsockname()[1]
    listener = StatusListener(
        StatusSettings(
            data_dir=service.settings.data_dir,
            database_url=service.settings.database_url,
            base_url=service.settings.revocation_base_url,
            log_level="warning",
            request_timeout=0.5,
        ),
        status_sock,
        metrics_sock=metrics_sock,
        metrics_app=metrics_app(MetricsExporter(tmp_path)),
    )
    await asyncio.to_thread(listener.start)
    try:
        _, said = await _closed_after(metrics_port, _get("/metrics", b"Connection: close\r\n"))
        assert said.startswith(b"HTTP/1.1 200")
        assert b"content-type: text/plain; version=0.0.4" in said.lower()
        assert b"\nprocess_cpu_seconds_total " in said
        _, said = await _closed_after(metrics_port, _get("/crl/none/0", b"Connection: close\r\n"))
        assert said.startswith(b"HTTP/1.1 404")  # the status routes are not here
        _, said = await _closed_after(status_port, _get("/metrics", b"Connection: close\r\n"))
        assert said.startswith(b"HTTP/1.1 404")  # nor the metrics on the public listener
        took, _ = await _closed_after(metrics_port)
        assert took is not None
        assert took < 3.0
    finally:
        await asyncio.to_thread(listener.stop)
    assert metrics_sock.fileno() == -1

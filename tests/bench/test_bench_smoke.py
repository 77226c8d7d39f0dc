"""CI smoke run of the benchmark (issue 5): `acme-ca bench` drives five complete
issuance flows, with real http-01 validation, against `acme-ca serve` and its
challenge test server, all started here as processes and stopped by PID. It checks
that the flows succeed, never how fast."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.conftest import (
    ACME_CA,
    LOOPBACK,
    ChallTestSrv,
    _start,
    _stop,
    _wait_until,
    free_port,
    tail,
)

pytestmark = pytest.mark.slow

_BENCH_TIMEOUT = 60.0  # a hard bound; the run itself takes a few seconds


@pytest.fixture
def challtestsrv(tmp_path: Path) -> Iterator[ChallTestSrv]:
    dns_port, mgmt_port = free_port(udp_too=True), free_port()
    srv = ChallTestSrv(
        dns_port=dns_port,
        management_url=f"http://{LOOPBACK}:{mgmt_port}",
        log=tmp_path / "challtestsrv.log",
    )
    argv = [str(ACME_CA), "challtestsrv", "--dns", f"{LOOPBACK}:{dns_port}"]
    proc = _start([*argv, "--management", f"{LOOPBACK}:{mgmt_port}"], srv.log)
    try:

        def ready() -> bool:
            srv.post("/clear-txt", {"host": "ready.example.test."})
            return True

        _wait_until(ready, proc, "challtestsrv", srv.log)
        yield srv
    finally:
        _stop(proc)


def test_bench_issues_five_certificates_without_errors(
    tmp_path: Path, challtestsrv: ChallTestSrv
) -> None:
    data_dir = tmp_path / "data"
    port, responder_port = free_port(), free_port()
    directory = f"https://{LOOPBACK}:{port}/directory"
    server_log = tmp_path / "acme-ca.log"
    server = _start(
        [
            str(ACME_CA),
            "serve",
            "--data-dir",
            str(data_dir),
            "--listen",
            f"{LOOPBACK}:{port}",
            "--dns-resolver",
            f"{LOOPBACK}:{challtestsrv.dns_port}",
            # The validator dials the bench's own http-01 responder.
            "--http-01-port",
            str(responder_port),
            "--allow-private-addresses",
            "--revocation-listen",
            f"{LOOPBACK}:{free_port()}",
            "--metrics-listen",
            f"{LOOPBACK}:{free_port()}",
            "--log-level",
            "warning",
        ],
        server_log,
    )
    try:
        root = data_dir / "root.pem"

        def ready() -> bool:
            if not root.exists():
                return False
            context = ssl.create_default_context(cafile=str(root))
            with urllib.request.urlopen(directory, timeout=5, context=context) as response:
                return bool(response.status == 200)

        _wait_until(ready, server, "acme-ca serve", server_log)

        out = tmp_path / "out.json"
        bench = subprocess.run(
            [
                str(ACME_CA),
                "bench",
                "--directory",
                directory,
                "--ca-bundle",
                str(root),
                "--count",
                "5",
                "--concurrency",
                "2",
                "--duration",
                "30",
                "--responder-listen",
                f"{LOOPBACK}:{responder_port}",
                "--server-pid",
                str(server.pid),
                "--no-progress",
                "--json",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=_BENCH_TIMEOUT,
            check=False,
        )
        where = f"bench:\n{bench.stdout}\n{bench.stderr}\nserver:\n{tail(server_log)}"
        assert bench.returncode == 0, where
        level = json.loads(out.read_text())["levels"][0]
        assert level["concurrency"] == 2, where
        assert (level["issued"], level["failed"], level["errors"]) == (5, 0, {}), where
        assert all(ep["errors"] == 0 for ep in level["endpoints"].values()), where
    finally:
        _stop(server)

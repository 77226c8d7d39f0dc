"""nginx (Debian's package) as the load balancer of deploy/nginx.conf, in front of two
`acme-ca serve` backends; one backend is SIGKILLed mid-run and every flow still ends
with its certificate. nginx retries refused and broken connections on the other
backend (`proxy_next_upstream error timeout non_idempotent`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import string
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from acme_ca.bench.client import AcmeClient
from acme_ca.bench.jws import generate_key
from tests.scale.conftest import Cluster
from tests.scale.scale_support import (
    FlowResult,
    SlowHttp01Responder,
    db_facts,
    free_port,
    run_flows,
    tail,
    tls_context,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
FLOWS = 24
CLIENTS = 4


def render(run_dir: Path, *, listen: int, backends: list[int], data_dir: Path) -> Path:
    conf = string.Template(TEMPLATE.read_text()).safe_substitute(
        ACME_CA_LISTEN=f"127.0.0.1:{listen}",
        ACME_CA_SERVER_NAME="127.0.0.1",
        ACME_CA_TLS_CERT=str(data_dir / "tls.pem"),
        ACME_CA_TLS_KEY=str(data_dir / "tls-key.pem"),
        ACME_CA_BACKENDS=" ".join(
            f"server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in backends
        ),
        ACME_CA_BACKEND_CA=str(data_dir / "root.pem"),
        ACME_CA_BACKEND_TLS_NAME="localhost",
        ACME_CA_RUN_DIR=str(run_dir),
    )
    directives = [line for line in conf.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in directives if "${ACME_CA_" in line]
    path = run_dir / "nginx.conf"
    path.write_text(conf)
    return path


@contextlib.contextmanager
def nginx(conf: Path) -> Iterator[subprocess.Popen[bytes]]:
    # As root, workers would drop to `nobody`, who cannot enter pytest's 0700 tmp dirs.
    directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
    check = subprocess.run(
        [NGINX, "-t", "-p", str(conf.parent), "-c", str(conf), "-g", directives],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stderr.decode()
    with (conf.parent / "nginx.out").open("wb") as out:
        proc = subprocess.Popen(
            [NGINX, "-p", str(conf.parent), "-c", str(conf), "-g", directives],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


async def _wait_ready(url: str, verify: object, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    async with httpx.AsyncClient(verify=verify, timeout=2) as http:  # type: ignore[arg-type]
        while time.monotonic() < deadline:
            assert proc.poll() is None, tail(log)
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} not ready:\n{tail(log)}")


@pytest.mark.skipif(
    not Path(NGINX).exists(), reason="nginx missing: scripts/install-interop-deps.sh"
)
async def test_a_backend_killed_behind_nginx(cluster: Cluster, tmp_path: Path) -> None:
    listen = free_port()
    external = f"https://127.0.0.1:{listen}"
    responder = SlowHttp01Responder(0.3)  # validations in flight when the kill comes
    await responder.start()
    run_dir = tmp_path / "nginx"
    run_dir.mkdir()
    try:
        backends = await cluster.start(
            2, job_lease_seconds=2, external_url=external, http01_port=responder.port
        )
        conf = render(
            run_dir, listen=listen, backends=[b.port for b in backends], data_dir=cluster.data_dir
        )
        with nginx(conf) as proc:
            verify = tls_context(cluster.data_dir)
            await _wait_ready(f"{external}/directory", verify, proc, run_dir / "error.log")
            results = await _load_and_kill(cluster, external, verify, responder, backends[0])
    finally:
        await responder.stop()

    context = f"{tail(run_dir / 'error.log')}\n{cluster.logs_tail()}"
    failures = [r for r in results if not isinstance(r, FlowResult) or r.status != "valid"]
    assert not failures, f"{failures}\n{context}"
    # The load balancer hid the dead backend: the clients never saw a broken connection
    # or a 502, at most a badNonce (retried) for a request the dead one had taken.
    seen = [p for r in results if isinstance(r, FlowResult) for p in r.problems]
    assert not [p for p in seen if p.startswith(("transport", "5"))], seen
    assert "upstream" in (run_dir / "error.log").read_text(), "no request met the dead backend"
    facts = db_facts(cluster.database)
    assert len(facts["certificates"]) == FLOWS
    assert facts["jobs"] == 0
    print(f"nginx: problems seen by clients: {seen}")
    print(tail(run_dir / "error.log", 8))


async def _load_and_kill(
    cluster: Cluster,
    external: str,
    verify: object,
    responder: SlowHttp01Responder,
    victim: object,
) -> list[FlowResult | BaseException]:
    clients = []
    for _ in range(CLIENTS):
        http = httpx.AsyncClient(verify=verify, timeout=30)  # type: ignore[arg-type]
        cluster.https.append(http)
        client = AcmeClient(f"{external}/directory", account_key=generate_key("p256"), http=http)
        await client.new_account()
        clients.append(client)

    async def kill_later() -> None:
        await responder.wait_for_requests(FLOWS // 3)
        victim.kill()  # type: ignore[attr-defined]

    killer = asyncio.create_task(kill_later())
    results = await run_flows(
        clients,
        [f"lb{i}.scale.test" for i in range(FLOWS)],
        responder,
        pause=0.2,
        tolerate_failures=True,
        timeout=90,
    )
    assert killer.done(), "the backend was never killed"
    await killer
    return results

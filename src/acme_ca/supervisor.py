"""`serve --workers N`: N uvicorn processes, each with its own listening socket.

uvicorn's own multi-worker mode shares one listening socket; whichever worker wakes
first accepts, and long-lived keep-alive connections opened in a burst all land on
one worker (measured: 31 of 32 connections, one worker at 9 s of CPU and the other
at 0.02 s). Here every worker has a listening socket of its own on the port
(SO_REUSEPORT), so the kernel spreads connections across workers by hash.

The supervisor checks first that the port is free (an exclusive bind), then binds
all the workers' sockets itself before it starts any worker, and keeps them: a
worker gets its socket at start. So connections made while the last workers are
still starting wait in their own socket's backlog instead of all landing on the
first worker up (seen: all 8 keep-alive connections of a benchmark on one worker),
and those waiting in a dead worker's backlog are answered by its replacement
instead of being reset. It restarts a worker that dies and stops them all on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from types import FrameType

import uvicorn

from acme_ca.wfe.http_server import AcmeHttpProtocol

__all__ = ["WorkerSpec", "run_single", "run_workers"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec:
    host: str
    port: int
    certfile: str
    keyfile: str
    log_level: str
    app: str = "acme_ca.cli:app_factory"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _check_port_free(spec: WorkerSpec) -> None:
    """Fail early and clearly if something else holds the port."""
    with socket.socket(_family(spec.host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((spec.host, spec.port))


def _config(spec: WorkerSpec) -> uvicorn.Config:
    return uvicorn.Config(
        spec.app,
        host=spec.host,
        port=spec.port,
        factory=True,
        ssl_certfile=spec.certfile,
        ssl_keyfile=spec.keyfile,
        log_level=spec.log_level,
        access_log=False,
        lifespan="on",
        loop="uvloop",
        http=AcmeHttpProtocol,
        server_header=False,
        ws="none",
        timeout_graceful_shutdown=5,
    )


def run_single(spec: WorkerSpec) -> None:
    """One process: uvicorn binds the port itself (exclusively)."""
    uvicorn.Server(_config(spec)).run()


def _listening_socket(spec: WorkerSpec) -> socket.socket:
    """One worker's socket on the shared port (SO_REUSEPORT), listening already."""
    sock = socket.socket(_family(spec.host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((spec.host, spec.port))
    sock.listen(2048)
    return sock


def _worker_main(spec: WorkerSpec, sock: socket.socket) -> None:
    uvicorn.Server(_config(spec)).run(sockets=[sock])


def run_workers(spec: WorkerSpec, workers: int) -> None:
    """Run `workers` processes until SIGTERM or SIGINT; restart any that dies."""
    _check_port_free(spec)
    context = multiprocessing.get_context("spawn")
    stopping = threading.Event()
    # Every socket listens before any worker starts, and outlives its worker.
    sockets = [_listening_socket(spec) for _ in range(workers)]

    def start(index: int) -> BaseProcess:
        process = context.Process(
            target=_worker_main, args=(spec, sockets[index]), name="acme-ca-worker"
        )
        process.start()
        return process

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    processes = [start(index) for index in range(workers)]
    try:
        while not stopping.wait(0.5):
            for index, process in enumerate(processes):
                if not process.is_alive():
                    log.warning(
                        "worker %s exited with %s; restarting", process.pid, process.exitcode
                    )
                    processes[index] = start(index)
    finally:
        # The port stops taking connections first: the workers' sockets close with
        # them once the supervisor's copies are gone.
        for sock in sockets:
            sock.close()
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)

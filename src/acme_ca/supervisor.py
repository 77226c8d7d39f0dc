"""`serve --workers N`: one listening socket in the supervisor, N uvicorn worker processes.

How connections reach workers decides how evenly they are loaded, since ACME clients
keep their connections alive. uvicorn's own multi-worker mode shares one listening
socket and whichever worker wakes first accepts: connections opened in a burst all
landed on one worker (measured: 31 of 32, one worker at 9 s of CPU and the other at
0.02 s). A socket per worker (SO_REUSEPORT) spreads them by a hash of the address,
which evens out only over many connections (of 8, 6-2 or worse about a third of the
time), and sends every connection to the first worker up while the others still
start (seen: all of a benchmark's 8 on one worker). So the supervisor accepts every
connection itself and hands it
(SCM_RIGHTS over a socket pair) to a ready worker: the one with the fewest handed
connections it has not yet acknowledged, then the fewest open ones. A worker says
when it is ready, acknowledges each connection as it takes it, and reports each
close. Connections wait in the kernel's backlog until a worker is up; the supervisor
keeps its copy of a connection until the worker's acknowledgement, so those a worker
never took (it died, or was stopped and then killed) go to another worker instead of
being lost; a stuck worker stops being chosen. The port is bound exclusively, by the
supervisor alone.

Each worker keeps at most `max_connections` open (acme_ca.listener), and the
supervisor hands none to a worker that has as many: when every worker is full it
closes new connections at once, rather than leaving them to fill the backlog or to
exhaust a worker's descriptors (a descriptor that cannot be received is dropped by the
kernel, and the supervisor kept its copy of that connection for good: seen with 1200
idle connections against a limit of 400, after which nothing was served).

The supervisor restarts a worker that dies, and stops them all on SIGTERM/SIGINT; a
worker whose supervisor is gone (its socket pair closed) stops as on SIGTERM.

With metrics on, every worker records into the run's directory (it inherits
PROMETHEUS_MULTIPROC_DIR), and the supervisor tells the metrics exporter which
workers run and which died (`mark_process_dead`: a dead worker's connections leave
the open-connections gauge; its counts stay).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import selectors
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from acme_ca.listener import (
    ACCEPT_PAUSE,
    ConnectionLimits,
    ListeningServer,
    RefusalLog,
    ServingServer,
    accept_some,
    listen,
)
from acme_ca.metrics.recorder import process_metrics
from acme_ca.wfe.http_server import AcmeHttpProtocol, HttpLimits

if TYPE_CHECKING:
    from acme_ca.metrics.exposition import MetricsExporter

__all__ = ["WorkerSpec", "run_single", "run_workers"]

log = logging.getLogger(__name__)

_READY = b"R"
_TAKEN = b"+"
_CLOSED = b"-"
_HANDED = b"c"
_SELECT_SECONDS = 0.5
_ALL_READY_SECONDS = 60.0
_STOP_MARGIN = 10.0
"""Seconds a stopping worker gets beyond its graceful shutdown (the lifespan's end)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec:
    host: str
    port: int
    certfile: str
    keyfile: str
    log_level: str
    app: str = "acme_ca.cli:app_factory"
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    """Per serving process: the supervisor hands a worker no more than these."""
    http: HttpLimits = field(default_factory=HttpLimits)
    keep_alive_timeout: int = 5
    """Seconds an idle connection is kept (before its first request, between them)."""
    shutdown_timeout: int = 5
    """Seconds answers in flight get on SIGTERM before they are cut short (503)."""


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
        timeout_keep_alive=spec.keep_alive_timeout,
        timeout_graceful_shutdown=spec.shutdown_timeout,
    )


class _AcmeProtocol(AcmeHttpProtocol):
    """The front end's protocol, releasing its connection's place when it closes."""

    on_closed: Callable[[], None] = staticmethod(lambda: None)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self.on_closed()


def _acme_protocol(
    server: ServingServer, http: HttpLimits, on_closed: Callable[[], None]
) -> asyncio.Protocol:
    protocol = _AcmeProtocol(
        config=server.config,
        server_state=server.server_state,
        app_state=server.lifespan.state,
        limits=http,
    )
    protocol.on_closed = on_closed
    return protocol


class _SingleServer(ListeningServer):
    def __init__(self, spec: WorkerSpec, listener: socket.socket) -> None:
        connections = process_metrics().listener("acme")
        super().__init__(_config(spec), spec.limits, listener, connections=connections)
        self._http = spec.http

    def make_protocol(self, on_closed: Callable[[], None]) -> asyncio.Protocol:
        return _acme_protocol(self, self._http, on_closed)


def run_single(spec: WorkerSpec) -> None:
    """One process, accepting from its own socket (bound here, exclusively, before the
    lifespan starts: a port in use fails at once)."""
    listener = listen(spec.host, spec.port)
    try:
        _SingleServer(spec, listener).run()
    finally:
        listener.close()


# ---- the worker's side ----------------------------------------------------------------


class _HandedServer(ServingServer):
    """Serving the connections the supervisor hands over `channel`; lifespan, signals
    and graceful shutdown are uvicorn's."""

    def __init__(self, spec: WorkerSpec, channel: socket.socket) -> None:
        connections = process_metrics().listener("acme")
        super().__init__(_config(spec), spec.limits, connections=connections)
        self._http = spec.http
        self._channel = channel
        self._reading = False

    def make_protocol(self, on_closed: Callable[[], None]) -> asyncio.Protocol:
        return _acme_protocol(self, self._http, on_closed)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit:
            return
        self._channel.setblocking(False)
        asyncio.get_running_loop().add_reader(self._channel.fileno(), self._receive)
        self._reading = True
        self._tell(_READY)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._stop_reading()
        await super().shutdown(sockets=sockets)
        self._channel.close()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            asyncio.get_running_loop().remove_reader(self._channel.fileno())

    def _tell(self, what: bytes) -> None:
        # The supervisor gone or slow: its counts are only a preference.
        with contextlib.suppress(OSError):
            self._channel.send(what)

    def _receive(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self._channel, 16, 1)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data and not fds:
                # The supervisor is gone: stop as on SIGTERM.
                self._stop_reading()
                self.should_exit = True
                return
            for fd in fds:
                self._tell(_TAKEN)
                self.admit(socket.socket(fileno=fd), functools.partial(self._tell, _CLOSED))
            for _ in range(data.count(_HANDED) - len(fds)):
                # The kernel dropped the descriptor (this process could open no more,
                # MSG_CTRUNC): let the supervisor close its copy, or it is kept for good.
                log.warning("a handed connection arrived without its descriptor; closed")
                self._tell(_TAKEN)
                self._tell(_CLOSED)


def _worker_main(spec: WorkerSpec, channel: socket.socket) -> None:
    _HandedServer(spec, channel).run()


# ---- the supervisor's side ------------------------------------------------------------


@dataclass(slots=True)
class _Worker:
    process: BaseProcess
    channel: socket.socket
    ready: bool = False
    """Serving: it said so once its startup was done."""
    open: int = 0
    """Connections handed to it and not reported closed."""
    pending: deque[socket.socket] = field(default_factory=deque)
    """The supervisor's copies of connections handed and not yet acknowledged, oldest
    first: handed again to another worker if this one dies without taking them."""


class _Supervisor:
    def __init__(
        self, spec: WorkerSpec, workers: int, exporter: MetricsExporter | None = None
    ) -> None:
        self._spec = spec
        self._exporter = exporter
        self._metrics = process_metrics()
        self._connections = self._metrics.listener("acme")
        self._context = multiprocessing.get_context("spawn")
        self._selector = selectors.DefaultSelector()
        self._listener = listen(spec.host, spec.port)
        self._accepting = False
        self._paused_until = 0.0
        self._full = RefusalLog("every worker is at max_connections")
        self._out_of_fds = RefusalLog("cannot accept")
        self._all_started = False
        self._start_deadline = time.monotonic() + _ALL_READY_SECONDS
        self._workers: list[_Worker | None] = [None] * workers
        self.stopping = threading.Event()

    def _start(self, index: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        process = self._context.Process(
            target=_worker_main, args=(self._spec, theirs), name="acme-ca-worker"
        )
        process.start()
        theirs.close()  # the worker has its own copy now
        if self._exporter is not None and process.pid is not None:
            self._exporter.worker_started(index, process.pid)
        ours.setblocking(False)
        self._workers[index] = _Worker(process=process, channel=ours)
        self._selector.register(ours, selectors.EVENT_READ, index)

    def _forget(self, index: int) -> None:
        """Its channel closed (the worker is gone or going): nothing more is handed to it."""
        worker = self._workers[index]
        if worker is not None and worker.channel.fileno() >= 0:
            self._selector.unregister(worker.channel)
            worker.channel.close()
        if worker is not None:
            worker.ready = False
            worker.open = 0
        self._accept_while_ready()
        if worker is not None:
            # Never taken by the dead worker (nobody read them): another one takes them.
            while worker.pending:
                self._hand(worker.pending.popleft())

    def _accept_while_ready(self) -> None:
        """Accept only while a worker is ready, and at start once all of them are (or
        after `_ALL_READY_SECONDS`): until then connections wait in the kernel's backlog,
        so that those opened at once are spread over every worker instead of going to the
        first one up. (A listener left readable would also spin the select.) Not either
        for a moment after accept failed for want of descriptors."""
        states = [w is not None and w.ready for w in self._workers]
        now = time.monotonic()
        if not self._all_started and (all(states) or now > self._start_deadline):
            self._all_started = True
        ready = any(states) if self._all_started else False
        if self._paused_until > now:
            ready = False
        else:
            self._paused_until = 0.0
        if ready and not self._accepting:
            self._selector.register(self._listener, selectors.EVENT_READ, None)
        elif not ready and self._accepting:
            self._selector.unregister(self._listener)
        self._accepting = ready

    def _hand(self, conn: socket.socket) -> None:
        """To the ready worker with the fewest unacknowledged, then open, connections,
        and fewer than `max_connections`; the supervisor's copy is kept until the worker
        acknowledges it. With every worker full, closed at once."""
        cap = self._spec.limits.max_connections
        ready = [(i, w) for i, w in enumerate(self._workers) if w is not None and w.ready]
        candidates = sorted((len(w.pending), w.open, i) for i, w in ready if w.open < cap)
        if ready and not candidates:
            self._full.refused(f"{len(ready)} x {cap} open")
            self._connections.refused()
            conn.close()
            return
        for _, _, index in candidates:
            worker = self._workers[index]
            assert worker is not None
            try:
                socket.send_fds(worker.channel, [_HANDED], [conn.fileno()])
            except OSError:
                continue  # its buffer is full (stuck) or it is gone: the next one
            worker.open += 1
            worker.pending.append(conn)
            return
        log.warning("no worker could take a connection; closed")
        conn.close()

    def _accept(self) -> None:
        accept_some(self._listener, self._hand, self._exhausted)

    def _exhausted(self, exc: OSError) -> None:
        # Stop accepting for a moment (it slept 10 ms a turn and logged each).
        self._out_of_fds.refused(str(exc))
        self._paused_until = time.monotonic() + ACCEPT_PAUSE
        self._accept_while_ready()

    def _read(self, index: int) -> None:
        worker = self._workers[index]
        if worker is None or worker.channel.fileno() < 0:
            return
        while True:
            try:
                data = worker.channel.recv(64)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._forget(index)  # the worker is gone; the process loop restarts it
                return
            for _ in range(min(data.count(_TAKEN), len(worker.pending))):
                worker.pending.popleft().close()  # the worker has its own copy
            worker.open = max(0, worker.open - data.count(_CLOSED))
            if _READY in data and not worker.ready:
                worker.ready = True
                self._accept_while_ready()

    def _restart_dead(self) -> None:
        for index, worker in enumerate(self._workers):
            if worker is not None and not worker.process.is_alive():
                log.warning(
                    "worker %s exited with %s; restarting",
                    worker.process.pid,
                    worker.process.exitcode,
                )
                self._forget(index)
                self._mark_dead(index, worker.process)
                self._metrics.worker_restarted()
                self._start(index)

    def _mark_dead(self, index: int, process: BaseProcess) -> None:
        if self._exporter is not None and process.pid is not None:
            self._exporter.worker_exited(index, process.pid)

    def run(self) -> None:
        for index in range(len(self._workers)):
            self._start(index)
        while not self.stopping.is_set():
            for key, _ in self._selector.select(_SELECT_SECONDS):
                if key.data is None:
                    self._accept()
                else:
                    self._read(key.data)
            self._restart_dead()
            if not self._all_started or (self._paused_until and not self._accepting):
                self._accept_while_ready()  # a deadline or a pause may have passed

    def close(self) -> None:
        """Stop taking connections, then stop the workers (each ends gracefully)."""
        if self._accepting:
            self._selector.unregister(self._listener)
            self._accepting = False
        self._listener.close()
        processes = [w.process for w in self._workers if w is not None]
        for process in processes:
            if process.is_alive():
                process.terminate()
        # One deadline for all (each had 10 s in turn: 20 s for two stuck workers).
        deadline = time.monotonic() + self._spec.shutdown_timeout + _STOP_MARGIN
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(5)
        for index, worker in enumerate(self._workers):
            if worker is not None and not worker.process.is_alive():
                self._mark_dead(index, worker.process)
        for worker in self._workers:
            if worker is not None and worker.channel.fileno() >= 0:
                self._selector.unregister(worker.channel)
                worker.channel.close()
            while worker is not None and worker.pending:
                worker.pending.popleft().close()
        self._selector.close()


def run_workers(spec: WorkerSpec, workers: int, *, exporter: MetricsExporter | None = None) -> None:
    """Run `workers` processes until SIGTERM or SIGINT; restart any that dies. The
    `exporter` (metrics on) is told of every worker started and every one gone."""
    supervisor = _Supervisor(spec, workers, exporter)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        supervisor.stopping.set()

    previous: dict[int, Any] = {
        sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        supervisor.run()
    finally:
        supervisor.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

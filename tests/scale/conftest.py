"""Fixtures for the multi-process tests: a fresh PostgreSQL database, CA material made by
`acme-ca init`, and a factory of `acme-ca serve` processes that are all stopped by PID."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from acme_ca.bench.client import AcmeClient
from acme_ca.bench.jws import generate_key
from acme_ca.testing import ChallengeTestServer
from tests.pg_support import PostgresServer, temporary_database
from tests.scale.scale_support import (
    EXTERNAL_URL,
    RotatingTransport,
    ServerProcess,
    free_port,
    init_ca,
    tail,
    tls_context,
)


@pytest.fixture
def scale_database(postgres_server: PostgresServer) -> Iterator[str]:
    with temporary_database(postgres_server) as name:
        yield postgres_server.url_for(name)


@dataclass(slots=True)
class Cluster:
    data_dir: Path
    database: str
    challtestsrv: ChallengeTestServer
    logs: Path
    servers: list[ServerProcess] = field(default_factory=list)
    transports: list[RotatingTransport] = field(default_factory=list)
    https: list[httpx.AsyncClient] = field(default_factory=list)

    def add(
        self,
        *,
        workers: int = 1,
        job_lease_seconds: int = 3,
        log_level: str = "warning",
        http01_port: int | None = None,
        external_url: str = EXTERNAL_URL,
        extra_args: tuple[str, ...] = (),
    ) -> ServerProcess:
        n = len(self.servers)
        server = ServerProcess(
            name=f"acme-ca-{n}",
            port=free_port(),
            data_dir=self.data_dir,
            database=self.database,
            log=self.logs / f"acme-ca-{n}.log",
            challtestsrv=self.challtestsrv,
            workers=workers,
            job_lease_seconds=job_lease_seconds,
            log_level=log_level,
            http01_port=http01_port,
            external_url=external_url,
            extra_args=extra_args,
        )
        self.servers.append(server)
        return server

    async def start(self, count: int, **kwargs: Any) -> list[ServerProcess]:
        started = [self.add(**kwargs) for _ in range(count)]
        for server in started:
            server.start()
        for server in started:
            for attempt in range(3):
                try:
                    await server.wait_ready()
                    break
                except RuntimeError:
                    # A port free when chosen may be taken before the bind (an outgoing
                    # connection's ephemeral port): choose again.
                    if attempt == 2 or "in use" not in tail(server.log, 5):
                        raise
                    server.port, server.revocation_port = free_port(), free_port()
                    server.metrics_port = free_port()
                    server.start()
        return started

    def http(self, ports: list[int], *, keepalive: bool = True) -> httpx.AsyncClient:
        """An HTTP client whose requests go round-robin over `ports` (closed at teardown)."""
        transport = RotatingTransport(ports, tls_context(self.data_dir), keepalive=keepalive)
        self.transports.append(transport)
        http = httpx.AsyncClient(transport=transport, timeout=30)
        self.https.append(http)
        return http

    async def client(
        self,
        ports: list[int],
        *,
        offset: int = 0,
        directory: str | None = None,
        keepalive: bool = True,
    ) -> AcmeClient:
        """A registered account whose requests go round-robin over `ports`."""
        client = AcmeClient(
            directory or f"{EXTERNAL_URL}/directory",
            account_key=generate_key("p256"),
            http=self.http(ports[offset:] + ports[:offset], keepalive=keepalive),
        )
        await client.new_account(contact=["mailto:scale@example.test"])
        return client

    def logs_tail(self) -> str:
        return "\n".join(f"== {s.name} ==\n{tail(s.log, 25)}" for s in self.servers)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
async def cluster_factory(
    tmp_path: Path, challtestsrv: ChallengeTestServer
) -> AsyncIterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(database: str, *, init_database: str | None = None) -> Cluster:
        data_dir = tmp_path / "data"
        init_ca(data_dir, init_database or database)
        cluster = Cluster(data_dir, database, challtestsrv, tmp_path)
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            for http in cluster.https:
                await http.aclose()
            cluster.stop()


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster], scale_database: str) -> Cluster:
    """CA material and a PostgreSQL database; servers are started by the test."""
    return cluster_factory(scale_database)

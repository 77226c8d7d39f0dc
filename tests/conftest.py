"""Shared fixtures: a CA made once per session, and a full acme-ca service in process.

The service is the real composition (`build_service`): real SQLite (or PostgreSQL),
real VA, real CA. Clients reach it through httpx's ASGI transport, and the VA
validates http-01 against the challenge test server's responder on loopback.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from acme_ca.bench.client import AcmeClient
from acme_ca.bench.jws import generate_key
from acme_ca.ca import create_ca
from acme_ca.clock import SystemClock
from acme_ca.service import AcmeService
from acme_ca.testing import ChallengeTestServer
from tests.acme_helpers import ClientFactory
from tests.pg_support import PostgresServer, find_server, temporary_database
from tests.policy_helpers import running_service

BASE_URL = "https://acme.test:14000"
DIRECTORY = f"{BASE_URL}/directory"


@pytest.fixture(scope="session")
def ca_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca-template")
    create_ca(path, clock=SystemClock())
    return path


@pytest.fixture
def data_dir(ca_template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(ca_template, target)
    return target


@pytest.fixture
async def challtestsrv() -> AsyncIterator[ChallengeTestServer]:
    server = ChallengeTestServer(
        dns_listen=("127.0.0.1", 0), management_listen=None, http01_listen=("127.0.0.1", 0)
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def pytest_report_header() -> str:
    server = find_server()
    if server.unavailable:
        return (
            f"postgresql: NOT reachable at {server.where} ({server.unavailable}): "
            "tests marked `postgres` are skipped, SQLite only"
        )
    return f"postgresql: {server.where}: every service test runs on SQLite and PostgreSQL"


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    server = find_server()
    if server.unavailable:
        pytest.skip(f"PostgreSQL not reachable at {server.where}: {server.unavailable}")
    return server


@pytest.fixture(scope="session")
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """One fresh database per session; tests share it (each makes its own accounts)."""
    with temporary_database(postgres_server) as name:
        yield postgres_server.url_for(name)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, data_dir: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_database"))
    return f"sqlite+aiosqlite:///{data_dir / 'acme-ca.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of the test's own (no schema): for tests that count rows or
    rate-limit counters. On PostgreSQL it costs a CREATE/DROP DATABASE (~50 ms)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'own.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with temporary_database(server) as name:
        yield server.url_for(name)


@pytest.fixture
async def service(
    data_dir: Path, challtestsrv: ChallengeTestServer, database_url: str
) -> AsyncIterator[AcmeService]:
    async with running_service(data_dir, challtestsrv, database_url) as svc:
        yield svc


@pytest.fixture
def http(service: AcmeService) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=service.app), base_url=BASE_URL)


@pytest.fixture
async def make_client(service: AcmeService) -> AsyncIterator[ClientFactory]:
    clients: list[AcmeClient] = []

    async def make(*, register: bool = True, key_kind: str = "p256") -> AcmeClient:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=service.app), base_url=BASE_URL)
        client = AcmeClient(DIRECTORY, account_key=generate_key(key_kind), http=http)
        clients.append(client)
        if register:
            await client.new_account(contact=["mailto:admin@example.test"])
        return client

    yield make
    for client in clients:
        await client._http.aclose()


def in_days(days: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=days)

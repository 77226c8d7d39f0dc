"""PostgreSQL for tests: find the server, create and drop throwaway databases.

The server is the one of `ACME_CA_TEST_POSTGRES` (an admin DSN; default the local
trust-auth server on 127.0.0.1:5432, database `test`). Set it to `off` to run
SQLite only. Each database made here is named `acme_ca_test_<random>` and dropped
by whoever made it. The admin commands are synchronous psycopg calls, so they never
touch the event loop of an async test.
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from sqlalchemy.engine import make_url

__all__ = [
    "ADMIN_ENV",
    "DEFAULT_ADMIN_DSN",
    "PostgresServer",
    "find_server",
    "temporary_database",
]

ADMIN_ENV = "ACME_CA_TEST_POSTGRES"
DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
_CONNECT_TIMEOUT = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresServer:
    """A reachable server, or the reason it is not."""

    admin_dsn: str
    unavailable: str | None

    @property
    def where(self) -> str:
        url = make_url(self.admin_dsn)
        return f"{url.host or 'localhost'}:{url.port or 5432}"

    def url_for(self, database: str) -> str:
        """The URL of `database` on this server (acme-ca picks the driver)."""
        url = make_url(self.admin_dsn).set(drivername="postgresql", database=database)
        return url.render_as_string(hide_password=False)

    def execute(self, *statements: str) -> None:
        with psycopg.connect(
            self.admin_dsn, autocommit=True, connect_timeout=_CONNECT_TIMEOUT
        ) as conn:
            for statement in statements:
                conn.execute(statement.encode())

    def create_database(self, *, prefix: str = "acme_ca_test", template: str | None = None) -> str:
        name = f"{prefix}_{secrets.token_hex(6)}"
        clause = f' TEMPLATE "{template}"' if template else ""
        self.execute(f'CREATE DATABASE "{name}"{clause}')
        return name

    def drop_database(self, name: str) -> None:
        # FORCE (PostgreSQL 13+): a killed server process may leave connections behind.
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@functools.cache
def find_server() -> PostgresServer:
    """Probe once per process: the report header and the fixtures ask the same question."""
    dsn = os.environ.get(ADMIN_ENV, DEFAULT_ADMIN_DSN).strip()
    if dsn.lower() in ("", "0", "off", "no", "false"):
        return PostgresServer(admin_dsn=DEFAULT_ADMIN_DSN, unavailable=f"{ADMIN_ENV}={dsn!r}")
    try:
        with psycopg.connect(dsn, connect_timeout=_CONNECT_TIMEOUT):
            pass
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())
        return PostgresServer(admin_dsn=dsn, unavailable=reason)
    return PostgresServer(admin_dsn=dsn, unavailable=None)


@contextmanager
def temporary_database(server: PostgresServer, *, template: str | None = None) -> Iterator[str]:
    """A fresh database on `server`, dropped on exit; yields its name."""
    name = server.create_database(template=template)
    try:
        yield name
    finally:
        server.drop_database(name)

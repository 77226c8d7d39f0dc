"""Schema migrations with Alembic, run on the writer engine."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from acme_ca.storage.engine import Engines

__all__ = ["current_revision", "head_revision", "upgrade"]

_SCRIPTS = Path(__file__).parent / "migrations"
# Any constant of our own: the key of the PostgreSQL advisory lock that migrations hold.
_MIGRATION_LOCK = 0x41434D45  # "ACME"


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


async def current_revision(engines: Engines) -> str | None:
    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engines.reader.connect() as conn:
        return await conn.run_sync(read)


async def upgrade(engines: Engines, revision: str = "heads") -> None:
    def run(connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            # Processes starting together on one database take turns; the later ones
            # find the schema at head. (SQLite's writer BEGIN IMMEDIATE does the same.)
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        command.upgrade(_config(connection), revision)

    async with engines.writer.begin() as conn:
        await conn.run_sync(run)

"""Alembic migrations on SQLite and PostgreSQL: from nothing, and under existing data.

The data is written with plain SQL against the first revision's tables, so the test
keeps meaning what it says however the current `Storage` code evolves.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from acme_ca.clock import FakeClock
from acme_ca.errors import Identifier
from acme_ca.model import AuthzStatus, ChallengeStatus, OrderStatus
from acme_ca.storage import migrate
from acme_ca.storage.engine import Engines, create_engines
from acme_ca.storage.inventory import CertificateFilter, Inventory
from acme_ca.storage.schema import metadata
from acme_ca.storage.store import Storage

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
US = 1_000_000


@pytest.fixture
async def engines(empty_database_url: str) -> AsyncIterator[Engines]:
    made = create_engines(empty_database_url, pool_size=2)
    try:
        yield made
    finally:
        await made.dispose()


def _heads() -> set[str]:
    return set(ScriptDirectory.from_config(migrate._config()).get_heads())


async def _revisions(engines: Engines) -> set[str]:
    def read(conn: Connection) -> set[str]:
        return set(MigrationContext.configure(conn).get_current_heads())

    async with engines.reader.connect() as conn:
        return await conn.run_sync(read)


async def _tables(engines: Engines) -> set[str]:
    def read(conn: Connection) -> set[str]:
        return set(inspect(conn).get_table_names())

    async with engines.reader.connect() as conn:
        return await conn.run_sync(read)


async def test_upgrade_of_an_empty_database_reaches_every_head(engines: Engines) -> None:
    assert await _revisions(engines) == set()
    await migrate.upgrade(engines)
    assert await _revisions(engines) == _heads()
    assert set(metadata.tables) <= await _tables(engines)


async def test_upgrade_twice_is_a_no_op(engines: Engines) -> None:
    await migrate.upgrade(engines)
    await migrate.upgrade(engines)
    assert await _revisions(engines) == _heads()


async def test_processes_starting_together_migrate_once(empty_database_url: str) -> None:
    """Several `acme-ca serve` started at once on one empty database all come up."""
    others = [create_engines(empty_database_url, pool_size=1) for _ in range(3)]
    try:
        await asyncio.gather(*(migrate.upgrade(e) for e in others))
        assert await _revisions(others[0]) == _heads()
    finally:
        for e in others:
            await e.dispose()


async def test_migrated_schema_matches_the_table_definitions(engines: Engines) -> None:
    """Every Table in schema.py has its migration, and they agree column by column."""
    await migrate.upgrade(engines)

    def diff(conn: Connection) -> list[Any]:
        return list(compare_metadata(MigrationContext.configure(conn), metadata))

    async with engines.reader.connect() as conn:
        assert await conn.run_sync(diff) == []


_ROWS_AT_0001 = [
    (
        "INSERT INTO accounts (id, status, jwk, thumbprint, contact, tos_agreed, eab_kid,"
        " created_at) VALUES ('acct1', 'valid', :jwk, 'thumb1', '[\"mailto:a@example.test\"]',"
        " :true, NULL, :now)"
    ),
    (
        "INSERT INTO authzs (id, account_id, identifier_type, identifier_value, wildcard,"
        " status, expires, created_at) VALUES ('authz1', 'acct1', 'dns', 'a.example.test',"
        " :false, 'pending', :later, :now)"
    ),
    (
        "INSERT INTO challenges (id, authz_id, type, token, status) VALUES"
        " ('chall1', 'authz1', 'http-01', 'token1', 'pending')"
    ),
    (
        "INSERT INTO orders (id, account_id, status, identifiers, authz_ids, expires,"
        " created_at) VALUES ('order1', 'acct1', 'pending', '[[\"dns\",\"a.example.test\"]]',"
        " '[\"authz1\"]', :later, :now)"
    ),
    "INSERT INTO order_authzs (order_id, authz_id) VALUES ('order1', 'authz1')",
    "INSERT INTO used_nonces (value, expires) VALUES ('nonce1', :later)",
    "INSERT INTO settings (name, value) VALUES ('nonce_hmac_key', 'a2V5')",
]


async def test_upgrade_keeps_existing_data(engines: Engines) -> None:
    await migrate.upgrade(engines, "0001")
    assert await _revisions(engines) == {"0001"}
    params = {
        "jwk": '{"crv":"Ed25519","kty":"OKP","x":"abc"}',
        "now": (NOW - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1),
        "true": True,
        "false": False,
    }
    params["later"] = int(params["now"]) + 86_400 * US  # type: ignore[call-overload]
    async with engines.writer.begin() as conn:
        for statement in _ROWS_AT_0001:
            await conn.execute(text(statement), params)

    await migrate.upgrade(engines)

    assert await _revisions(engines) == _heads()
    store = Storage(engines, FakeClock(NOW))
    account = await store.get_account_by_thumbprint("thumb1")
    assert account is not None
    assert account.contact == ("mailto:a@example.test",)
    # RFC 8555 §7.3.3: no recorded agreement (0004); the gate reads it as the terms at upgrade.
    assert account.tos_agreed_url is None
    order = await store.get_order("order1")
    assert order is not None
    assert order.status == OrderStatus.PENDING
    assert order.authz_ids == ("authz1",)
    authz = await store.get_authz("authz1")
    assert authz is not None
    assert authz.status == AuthzStatus.PENDING
    assert [c.status for c in authz.challenges] == [ChallengeStatus.PENDING]
    if store.nonce_scope_can_change:
        # PostgreSQL: the redemption is still there (0007 made the table unlogged).
        assert not await store.redeem_nonce("nonce1", NOW)
    # On SQLite redemptions moved to the nonce log and the nonce key is bound to the
    # boot (storage.nonce_log): a nonce issued before the upgrade fails its MAC.
    assert await store.get_or_create_setting("nonce_hmac_key", "other") == "a2V5"
    # The migrated database takes new writes as usual.
    assert await store.start_challenge("authz1", "chall1", lease_until=NOW)


async def test_upgrade_settles_orders_the_replacement_index_would_refuse(engines: Engines) -> None:
    """0005: of live orders naming one certificate in `replaces` (concurrent newOrders
    could both pass the old check), the valid one, else the earliest, keeps naming it;
    an expired pending order becomes invalid, as it already read."""
    await migrate.upgrade(engines, "0004_terms_agreement")  # 0001, 0003, 0004: not 0002, 0005
    # The migration judges expiry by the real clock.
    now = (dt.datetime.now(dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(
        microseconds=1
    )
    rows = [  # id, status, replaces, created_at, expires
        ("early", "pending", "c1", now, now + 86_400 * US),
        ("late", "pending", "c1", now + 1, now + 86_400 * US),
        ("pend", "pending", "c2", now, now + 86_400 * US),
        ("done", "valid", "c2", now + 1, now + 86_400 * US),
        ("gone", "pending", "c3", now, now - 1),  # expired
        ("live", "ready", "c3", now + 1, now + 86_400 * US),
        ("failed", "invalid", "c3", now, now + 86_400 * US),
    ]
    async with engines.writer.begin() as conn:
        for order_id, status, replaces, created, expires in rows:
            await conn.execute(
                text(
                    "INSERT INTO orders (id, account_id, status, identifiers, authz_ids, expires,"
                    " replaces, created_at) VALUES (:id, 'acct1', :status, '[]', '[]', :expires,"
                    " :replaces, :created)"
                ),
                {
                    "id": order_id,
                    "status": status,
                    "replaces": replaces,
                    "created": created,
                    "expires": expires,
                },
            )

    await migrate.upgrade(engines)

    async with engines.reader.connect() as conn:
        found = (await conn.execute(text("SELECT id, status, replaces FROM orders"))).all()
    assert {r.id: (r.status, r.replaces) for r in found} == {
        "early": ("pending", "c1"),
        "late": ("pending", None),
        "pend": ("pending", None),
        "done": ("valid", "c2"),
        "gone": ("invalid", "c3"),
        "live": ("ready", "c3"),
        "failed": ("invalid", "c3"),
    }


async def _indexes(engines: Engines, table: str) -> dict[str, list[str]]:
    def read(conn: Connection) -> dict[str, list[str]]:
        return {
            str(ix["name"]): [str(c) for c in ix["column_names"]]
            for ix in inspect(conn).get_indexes(table)
        }

    async with engines.reader.connect() as conn:
        return await conn.run_sync(read)


_ISSUED_AT_0005 = [
    (
        "INSERT INTO authzs (id, account_id, identifier_type, identifier_value, wildcard,"
        " status, expires, created_at) VALUES ('authz1', 'acct1', 'dns', 'a.example.test',"
        " :false, 'valid', :later, :now)"
    ),
    "INSERT INTO order_authzs (order_id, authz_id) VALUES ('order1', 'authz1')",
    (
        "INSERT INTO certificates (id, serial, account_id, order_id, identifiers, pem_chains,"
        " spki_sha256, not_before, not_after, issued_at) VALUES ('cert1', 'abc', 'acct1',"
        " 'order1', '[[\"dns\",\"a.example.test\"]]', '[\"PEM\"]', '00', :now, :later, :now)"
    ),
]


async def test_upgrade_indexes_certificates_by_name_and_account(engines: Engines) -> None:
    """0006 (`admin certificates`, `admin revoke`): a name's authorizations, and an
    account's certificates in id order; under existing rows, and back down again."""
    await migrate.upgrade(engines, "0005_one_live_replacement")
    await migrate.upgrade(engines, "0004_terms_agreement")
    assert await _revisions(engines) == {"0004_terms_agreement", "0005_one_live_replacement"}
    now = (NOW - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    params = {"now": now, "later": now + 86_400 * US, "false": False}
    async with engines.writer.begin() as conn:
        for statement in _ISSUED_AT_0005:
            await conn.execute(text(statement), params)
    assert (await _indexes(engines, "certificates"))["ix_certificates_account"] == ["account_id"]
    assert "ix_authzs_identifier" not in await _indexes(engines, "authzs")

    await migrate.upgrade(engines)

    assert await _revisions(engines) == _heads()
    certificates_ix = await _indexes(engines, "certificates")
    assert certificates_ix["ix_certificates_account"] == ["account_id", "id"]
    assert (await _indexes(engines, "authzs"))["ix_authzs_identifier"] == ["identifier_value"]
    inventory = Inventory(engines)
    by_name = CertificateFilter(name=Identifier(type="dns", value="a.example.test"))
    for wanted in (by_name, CertificateFilter(account_id="acct1")):
        found, more = await inventory.find(wanted, now=NOW, limit=10)
        assert [c.serial for c in found] == ["abc"]
        assert not more

    def downgrade(conn: Connection) -> None:
        command.downgrade(migrate._config(conn), "0006_certificate_inventory@-1")

    async with engines.writer.begin() as conn:
        await conn.run_sync(downgrade)
    assert await _revisions(engines) == _heads() - {"0006_certificate_inventory"}
    assert (await _indexes(engines, "certificates"))["ix_certificates_account"] == ["account_id"]
    assert "ix_authzs_identifier" not in await _indexes(engines, "authzs")


async def test_upgrade_makes_used_nonces_unlogged_on_postgresql(engines: Engines) -> None:
    """0007: redemptions write no WAL on PostgreSQL (the nonce key is bound to the
    server's start instead); their rows stay; back down again. Nothing on SQLite."""
    await migrate.upgrade(engines, "0001")
    async with engines.writer.begin() as conn:
        await conn.execute(text("INSERT INTO used_nonces (value, expires) VALUES ('n1', 1)"))
    await migrate.upgrade(engines)
    assert await _revisions(engines) == _heads()
    postgres = engines.dialect != "sqlite"
    if postgres:
        assert await _persistence(engines, "used_nonces") == "u"
        store = Storage(engines, FakeClock(NOW))
        assert not await store.redeem_nonce("n1", NOW)  # still recorded

    def downgrade(conn: Connection) -> None:
        command.downgrade(migrate._config(conn), "0007_unlogged_nonces@-1")

    async with engines.writer.begin() as conn:
        await conn.run_sync(downgrade)
    assert "0007_unlogged_nonces" not in await _revisions(engines)
    if postgres:
        assert await _persistence(engines, "used_nonces") == "p"


async def _persistence(engines: Engines, table: str) -> str:
    async with engines.reader.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT relpersistence FROM pg_class WHERE relname = :t"), {"t": table}
            )
        ).first()
    assert row is not None
    return str(row[0])

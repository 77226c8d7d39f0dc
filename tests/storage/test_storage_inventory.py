"""The certificate inventory: every query it makes starts from an index (SQLite's and
PostgreSQL's own plans say so), and a query no index narrows needs a limit."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Connection

from acme_ca.errors import Identifier
from acme_ca.storage.engine import Engines, create_engines
from acme_ca.storage.inventory import CertificateFilter, CertificateState, Inventory, Only
from acme_ca.storage.migrate import upgrade

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
NAME = Identifier(type="dns", value="www.example.test")
WILDCARD = Identifier(type="dns", value="*.example.test")


@pytest.fixture
async def engines(empty_database_url: str) -> AsyncIterator[Engines]:
    made = create_engines(empty_database_url, pool_size=2)
    await upgrade(made)
    try:
        yield made
    finally:
        await made.dispose()


def _plan(engines: Engines, conn: Connection, statement: str, params: Any) -> list[str]:
    if engines.dialect == "sqlite":
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()
        return [str(r[-1]) for r in rows]
    # Any table is small here: with sequential scans priced out, PostgreSQL still
    # chooses one only where no index can serve.
    conn.exec_driver_sql("SET enable_seqscan = off")
    try:
        return [str(r[0]) for r in conn.exec_driver_sql("EXPLAIN " + statement, params).all()]
    finally:
        conn.exec_driver_sql("RESET enable_seqscan")


def _plan_of(engines: Engines, statement: str, params: Any) -> Callable[[Connection], list[str]]:
    return lambda conn: _plan(engines, conn, statement, params)


CASES = [
    pytest.param(CertificateFilter(), 10, id="newest"),
    pytest.param(CertificateFilter(only=Only.LIVE), 10, id="live"),
    pytest.param(CertificateFilter(only=Only.REVOKED), 10, id="revoked"),
    pytest.param(CertificateFilter(account_id="acct"), 10, id="account"),
    pytest.param(CertificateFilter(account_id="acct", only=Only.LIVE), None, id="account-live-all"),
    pytest.param(CertificateFilter(account_id="acct", only=Only.REVOKED), 10, id="account-revoked"),
    pytest.param(CertificateFilter(name=NAME), 10, id="name"),
    pytest.param(CertificateFilter(name=WILDCARD, only=Only.LIVE), None, id="wildcard-live"),
    pytest.param(CertificateFilter(name=NAME, account_id="acct"), None, id="name-account"),
    pytest.param(CertificateFilter(serials=("ab", "cd"), account_id="acct"), None, id="serials"),
]


@pytest.mark.parametrize(("wanted", "limit"), CASES)
async def test_every_query_starts_from_an_index(
    engines: Engines, wanted: CertificateFilter, limit: int | None
) -> None:
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, params))

    event.listen(engines.reader.sync_engine, "before_cursor_execute", seen)
    try:
        await Inventory(engines).find(wanted, now=NOW, limit=limit)
    finally:
        event.remove(engines.reader.sync_engine, "before_cursor_execute", seen)
    assert statements
    for statement, params in statements:
        async with engines.reader.connect() as conn:
            plan = await conn.run_sync(_plan_of(engines, statement, params))
        text = "\n".join(plan)
        if engines.dialect == "sqlite":
            # SCAN without an index reads the whole table; a temporary B-tree sorts all
            # rows found before the first comes out. Only the newest-first listing walks
            # the primary key, and stops at its limit.
            assert "TEMP B-TREE" not in text, text
            for step in plan:
                if step.startswith("SCAN"):
                    assert limit is not None, text
                    assert step == "SCAN certificates USING INDEX sqlite_autoindex_certificates_1"
        else:
            # Whether it then sorts depends on the statistics of real tables.
            assert "Seq Scan" not in text, text


async def test_a_query_no_index_narrows_needs_a_limit(engines: Engines) -> None:
    inventory = Inventory(engines)
    for wanted in (CertificateFilter(), CertificateFilter(only=Only.LIVE)):
        with pytest.raises(ValueError, match="limit"):
            await inventory.find(wanted, now=NOW, limit=None)
    with pytest.raises(ValueError, match="positive"):
        await inventory.find(CertificateFilter(account_id="acct"), now=NOW, limit=0)
    assert await inventory.find(CertificateFilter(account_id="acct"), now=NOW, limit=None) == (
        [],
        False,
    )


def test_states() -> None:
    from acme_ca.storage.inventory import CertificateRecord

    def record(not_after: dt.datetime, revoked: bool) -> CertificateRecord:
        return CertificateRecord(
            id="c",
            serial="1",
            account_id="a",
            identifiers=(NAME,),
            spki_sha256="00",
            not_before=NOW - dt.timedelta(days=1),
            not_after=not_after,
            issued_at=NOW - dt.timedelta(days=1),
            revoked_at=NOW if revoked else None,
            revocation_reason=None,
        )

    later, earlier = NOW + dt.timedelta(seconds=1), NOW
    assert record(later, revoked=False).state(NOW) == CertificateState.VALID
    assert record(earlier, revoked=False).state(NOW) == CertificateState.EXPIRED
    # Revocation outranks expiry.
    assert record(earlier, revoked=True).state(NOW) == CertificateState.REVOKED
    assert record(later, revoked=True).state(NOW) == CertificateState.REVOKED

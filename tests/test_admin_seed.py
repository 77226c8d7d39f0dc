"""`acme-ca admin seed`: bulk rows as finished issuance flows leave them, readable by the
server's own storage code."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import Table, create_engine, func, select

from acme_ca.cli import main
from acme_ca.clock import SystemClock
from acme_ca.model import AuthzStatus, OrderStatus
from acme_ca.seed import seed_database
from acme_ca.storage import schema
from acme_ca.storage.engine import create_engines, sqlite_url
from acme_ca.storage.store import Storage


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    assert main(["init", "--data-dir", str(tmp_path / "data")]) == 0
    return tmp_path / "data"


def _count(url: str, table: Table) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
    finally:
        engine.dispose()


def test_seed_writes_unique_flows_in_batches(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["admin", "seed", "--count", "25", "--batch", "10", "--data-dir", str(data_dir)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "seeded 10/25" in out
    assert "seeded 25 flows (200 rows)" in out
    url = sqlite_url(data_dir / "acme-ca.db")
    assert main([*argv[:3], "5", "--quiet", "--data-dir", str(data_dir)]) == 0  # twice: no clash
    expected = {"accounts": 30, "orders": 30, "authzs": 30, "challenges": 90, "certificates": 30}
    for name, count in expected.items():
        assert _count(url, schema.metadata.tables[name]) == count
    engine = create_engine(url)
    with engine.connect() as conn:
        serials = conn.execute(select(schema.certificates.c.serial)).scalars().all()
        cert_id, order_id = conn.execute(
            select(schema.certificates.c.id, schema.certificates.c.order_id).limit(1)
        ).one()
    engine.dispose()
    assert len(set(serials)) == 30

    async def read_back() -> None:
        engines = create_engines(url)
        storage = Storage(engines, SystemClock())
        try:
            cert = await storage.get_certificate(cert_id)
            order = await storage.get_order(order_id)
            assert cert is not None
            assert order is not None
            assert cert.pem_chains[0].startswith("-----BEGIN CERTIFICATE-----")
            assert order.status == OrderStatus.VALID
            assert order.certificate_id == cert_id
            authz = await storage.get_authz(order.authz_ids[0])
            assert authz is not None
            assert authz.status in (AuthzStatus.VALID, AuthzStatus.EXPIRED)
            assert len(authz.challenges) == 3
        finally:
            await engines.dispose()

    asyncio.run(read_back())


def test_seed_refuses_an_unbounded_count(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="count"):
        seed_database(sqlite_url(data_dir / "x.db"), data_dir, count=0)
    argv = ["admin", "seed", "--count", "20000000", "--data-dir", str(data_dir)]
    assert main(argv) == 2


def test_seed_needs_a_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["admin", "seed", "--count", "1", "--data-dir", str(tmp_path)]) == 1
    assert "acme-ca init" in capsys.readouterr().err

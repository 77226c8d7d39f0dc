"""`acme-ca admin seed`: fill a database with N accounts and N issued certificates, as
finished issuance flows leave them, to measure the server with a large history (issue 5).

A benchmark fixture, not an issuance path: rows go straight into the storage tables in
bulk (executemany, batches inside transactions). Per flow it writes one account, one
valid order with its CSR and serial, one valid authorization with its three challenges
(http-01 valid with a validation record, the others pending) and its order link, and
one certificate row. All certificates share one real leaf signed here by the data
directory's CA, to save the signing time; ids, serials, thumbprints and names are
unique. Seeded account keys are random points (they are never used to sign).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import Table, create_engine, event, insert
from sqlalchemy.engine import Connection

from acme_ca.ca import CertificateAuthority
from acme_ca.clock import Clock, SystemClock
from acme_ca.config import Settings
from acme_ca.errors import Identifier
from acme_ca.model import IdentifierType
from acme_ca.storage import schema
from acme_ca.storage.codec import dumps, identifiers_to_json, to_us
from acme_ca.storage.engine import create_engines, is_sqlite, normalize_url
from acme_ca.storage.migrate import upgrade

__all__ = ["SeedReport", "register_seed", "seed_database"]

MAX_COUNT = 10_000_000
DEFAULT_BATCH = 10_000
_DOMAIN = "seed.invalid"
_DAY_US = 86_400 * 1_000_000
# Issued over the past 60 days, so that some authorizations and orders have expired,
# as they would have on a CA that has been running.
_HISTORY_US = 60 * _DAY_US


@dataclass(frozen=True, slots=True, kw_only=True)
class SeedReport:
    flows: int
    rows: int
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class _Shared:
    """What every seeded flow has in common: one real leaf, its CSR, one fake JWK shape."""

    pem_chains: str
    csr_der: bytes
    not_after_span_us: int


def _shared_material(data_dir: Path, clock: Clock) -> _Shared:
    key = ec.generate_private_key(ec.SECP256R1())
    name = f"shared.{_DOMAIN}"
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    ca = CertificateAuthority.load(data_dir, clock=clock)
    issued = ca.issue(
        csr=csr,
        identifiers=[Identifier(type=IdentifierType.DNS, value=name)],
        serial=CertificateAuthority.new_serial(),
    )
    return _Shared(
        pem_chains=dumps(list(issued.pem_chains)),
        csr_der=csr.public_bytes(serialization.Encoding.DER),
        not_after_span_us=to_us(issued.not_after) - to_us(issued.not_before),
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _Unique:
    """Unique strings shaped as real ones: ids start with their row's creation time (so
    they sort by it, as the server's do), other values with random bytes; each ends with
    the run, kind and flow index, so that they are unique by construction."""

    def __init__(self, run: bytes) -> None:
        self._run = run

    def id(self, index: int, kind: int, created_us: int) -> str:
        # As `ra.context.new_id`: 6 bytes of creation time in ms, then 9 more (here 2
        # random + run + kind + 4 of index), lowercase base32hex.
        body = (created_us // 1000).to_bytes(6, "big") + os.urandom(2) + self._run
        return (
            base64.b32hexencode(body + bytes([kind]) + index.to_bytes(4, "big"))
            .decode("ascii")
            .lower()
        )

    def hexa(self, index: int, random_bytes: int) -> str:
        return (os.urandom(random_bytes) + self._run + index.to_bytes(4, "big")).hex()


def _flow_rows(
    index: int, now_us: int, shared: _Shared, unique: _Unique
) -> Iterator[tuple[Table, dict[str, Any]]]:
    """The rows one finished issuance flow leaves (RFC 8555 §7.1: account, order, authz,
    challenges, certificate)."""
    created = now_us - (index * 7919) % _HISTORY_US
    account_id, order_id, authz_id, cert_id = (unique.id(index, k, created) for k in range(4))
    name = f"n{index}.{_DOMAIN}"
    jwk = {"crv": "P-256", "kty": "EC", "x": _b64(os.urandom(32)), "y": _b64(os.urandom(32))}
    yield (
        schema.accounts,
        {
            "id": account_id,
            "status": "valid",
            "jwk": dumps(jwk),
            "thumbprint": _b64(bytes.fromhex(unique.hexa(index, 26))),
            "contact": "[]",
            "tos_agreed": True,
            "eab_kid": None,
            "created_at": created,
        },
    )
    identifiers = identifiers_to_json([Identifier(type=IdentifierType.DNS, value=name)])
    # As `CertificateAuthority.new_serial`: the time in ms, then 80 bits (here 32
    # random + run + index).
    serial = format((created // 1000) << 80 | int(unique.hexa(index, 4), 16), "x")
    yield (
        schema.authzs,
        {
            "id": authz_id,
            "account_id": account_id,
            "identifier_type": "dns",
            "identifier_value": name,
            "wildcard": False,
            "status": "valid",
            "expires": created + 30 * _DAY_US,
            "created_at": created,
        },
    )
    for kind, ctype in enumerate(("http-01", "dns-01", "tls-alpn-01"), start=4):
        valid = ctype == "http-01"
        yield (
            schema.challenges,
            {
                "id": unique.id(index, kind, created),
                "authz_id": authz_id,
                "type": ctype,
                "token": _b64(os.urandom(32)),
                "status": "valid" if valid else "pending",
                "validated": created + 50_000 if valid else None,
                "error": None,
                "validation_record": (
                    dumps(
                        [
                            {
                                "url": f"http://{name}/.well-known/acme-challenge/x",
                                "hostname": name,
                                "port": "80",
                                "addressesResolved": ["127.0.0.1"],
                                "addressUsed": "127.0.0.1",
                            }
                        ]
                    )
                    if valid
                    else None
                ),
            },
        )
    yield (
        schema.orders,
        {
            "id": order_id,
            "account_id": account_id,
            "status": "valid",
            "identifiers": identifiers,
            "authz_ids": json.dumps([authz_id]),
            "expires": created + 7 * _DAY_US,
            "not_before": None,
            "not_after": None,
            "error": None,
            "certificate_id": cert_id,
            "profile": None,
            "replaces": None,
            "created_at": created,
            "csr": shared.csr_der,
            "serial": serial,
        },
    )
    yield schema.order_authzs, {"order_id": order_id, "authz_id": authz_id}
    issued = created + 100_000
    yield (
        schema.certificates,
        {
            "id": cert_id,
            "serial": serial,
            "account_id": account_id,
            "order_id": order_id,
            "identifiers": identifiers,
            "pem_chains": shared.pem_chains,
            "spki_sha256": hashlib.sha256(os.urandom(16)).hexdigest(),
            "not_before": issued - 60_000_000,
            "not_after": issued - 60_000_000 + shared.not_after_span_us,
            "issued_at": issued,
            "revoked_at": None,
            "revocation_reason": None,
        },
    )


_TABLE_ORDER = (
    schema.accounts,
    schema.authzs,
    schema.challenges,
    schema.orders,
    schema.order_authzs,
    schema.certificates,
)


def _insert_batch(
    conn: Connection, flows: range, *, now_us: int, shared: _Shared, unique: _Unique
) -> int:
    rows: dict[str, list[dict[str, Any]]] = {t.name: [] for t in _TABLE_ORDER}
    for index in flows:
        for table, row in _flow_rows(index, now_us, shared, unique):
            rows[table.name].append(row)
    for table in _TABLE_ORDER:
        conn.execute(insert(table), rows[table.name])
    return sum(len(r) for r in rows.values())


def seed_database(
    url: str,
    data_dir: Path,
    *,
    count: int,
    batch: int = DEFAULT_BATCH,
    clock: Clock | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> SeedReport:
    """Migrate the database at `url`, then add `count` finished flows in transactions of
    `batch` flows. `progress(done, count, seconds)` is called after each batch."""
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count must be within 1..{MAX_COUNT}")
    if not 1 <= batch <= 100_000:
        raise ValueError("batch must be within 1..100000")
    clock = clock or SystemClock()
    shared = _shared_material(data_dir, clock)
    asyncio.run(_migrate(url))
    engine = create_engine(normalize_url(url))
    if is_sqlite(url):

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # The same journal as the server (WAL); a seed that dies is simply rerun.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA cache_size=-262144")  # 256 MiB of page cache
            cursor.close()

    unique = _Unique(os.urandom(2))
    now_us = to_us(clock.now())
    rows = 0
    started = time.perf_counter()
    try:
        for start in range(0, count, batch):
            stop = min(start + batch, count)
            with engine.begin() as conn:
                rows += _insert_batch(
                    conn, range(start, stop), now_us=now_us, shared=shared, unique=unique
                )
            if progress is not None:
                progress(stop, count, time.perf_counter() - started)
    finally:
        engine.dispose()
    return SeedReport(flows=count, rows=rows, seconds=time.perf_counter() - started)


async def _migrate(url: str) -> None:
    engines = create_engines(url)
    try:
        await upgrade(engines)
    finally:
        await engines.dispose()


def _print_progress(done: int, count: int, seconds: float) -> None:
    rate = done / seconds if seconds > 0 else 0.0
    left = (count - done) / rate if rate > 0 else 0.0
    print(
        f"seeded {done}/{count} flows ({done * 100 / count:.0f}%), "
        f"{rate:,.0f} flows/s, ~{left:.0f}s left",
        flush=True,
    )


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if not (settings.data_dir / "root.pem").exists():
        print(f"acme-ca: no CA in {settings.data_dir}; run `acme-ca init` first", file=sys.stderr)
        return 1
    try:
        report = seed_database(
            settings.database_url,
            settings.data_dir,
            count=args.count,
            batch=args.batch,
            progress=None if args.quiet else _print_progress,
        )
    except ValueError as exc:
        print(f"acme-ca: {exc}", file=sys.stderr)
        return 2
    print(
        f"seeded {report.flows} flows ({report.rows} rows) in {report.seconds:.1f}s "
        f"into {settings.database_url.split('@')[-1]}",
        flush=True,
    )
    return 0


def register_seed(
    groups: Any,
    *,
    add_common: Callable[[argparse.ArgumentParser], None],
    load: Callable[[argparse.Namespace], Settings],
) -> None:
    """Add `admin seed` under the admin subcommands (`groups`: argparse subparsers)."""
    seed = groups.add_parser(
        "seed", help="fill the database with N accounts and certificates (benchmarks)"
    )
    seed.add_argument("--count", type=int, required=True, help=f"flows to add (1..{MAX_COUNT})")
    seed.add_argument(
        "--batch", type=int, default=DEFAULT_BATCH, help="flows per transaction (10000)"
    )
    seed.add_argument("--quiet", action="store_true", help="no progress lines")
    add_common(seed)
    seed.set_defaults(func=lambda args: _run(args, load(args)))

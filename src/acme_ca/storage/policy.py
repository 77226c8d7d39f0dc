"""Storage of the issuance policy: EAB keys, rate-limit counts, pre-authorizations.

The SQL behind `ra.eab`, `ra.ratelimits` and newAuthz. Counting is done in the
database so that limits hold across processes: windowed limits either count rows
of an indexed table (orders) or sum a few bucketed counter rows; counter rows are
bumped with one upsert.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, delete, func, insert, select, update

from acme_ca.clock import Clock
from acme_ca.model import Authorization, AuthzStatus
from acme_ca.storage import codec
from acme_ca.storage.engine import Engines
from acme_ca.storage.schema import eab_keys, rate_counters
from acme_ca.storage.store import UPSERT_COUNTER, insert_authz_of_valid_account

__all__ = ["CounterTotal", "EabKey", "PolicyStore", "WindowCount"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EabKey:
    kid: str
    hmac_key: bytes
    label: str | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    account_id: str | None
    bind_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CounterTotal:
    """Events counted in the window, and the start of the oldest bucket that has any."""

    count: int
    oldest_bucket: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowCount:
    count: int
    oldest: dt.datetime | None


def _eab_from_row(row: Row[Any]) -> EabKey:
    return EabKey(
        kid=row.kid,
        hmac_key=bytes(row.hmac_key),
        label=row.label,
        created_at=codec.from_us(row.created_at),
        revoked_at=codec.opt_from_us(row.revoked_at),
        account_id=row.account_id,
        bind_count=row.bind_count,
    )


# Both counts use an index on the account's ID; the orders count stops at the cap,
# so a busy account costs no more than its limit.
_ACCOUNT_ACTIVITY = (
    "SELECT o.n AS orders, o.oldest AS oldest_order, p.n AS pending, p.first AS first_expiry"
    " FROM (SELECT count(*) AS n, min(created_at) AS oldest FROM"
    "   (SELECT created_at FROM orders WHERE account_id = ? AND created_at >= ?"
    "    ORDER BY created_at DESC LIMIT ?) AS recent) AS o,"
    " (SELECT count(*) AS n, min(expires) AS first FROM authzs"
    "   WHERE account_id = ? AND status = ? AND expires > ?) AS p"
)


class PolicyStore:
    def __init__(self, engines: Engines, clock: Clock) -> None:
        self._engines = engines
        self._clock = clock

    # ---- External Account Binding keys (RFC 8555 §7.3.4) ----------------------

    async def create_eab_key(self, *, kid: str, hmac_key: bytes, label: str | None) -> EabKey:
        now = self._clock.now()
        async with self._engines.writer.begin() as conn:
            await conn.execute(
                insert(eab_keys).values(
                    kid=kid,
                    hmac_key=hmac_key,
                    label=label,
                    created_at=codec.to_us(now),
                    revoked_at=None,
                    account_id=None,
                    bind_count=0,
                )
            )
        return EabKey(
            kid=kid,
            hmac_key=hmac_key,
            label=label,
            created_at=now,
            revoked_at=None,
            account_id=None,
            bind_count=0,
        )

    async def get_eab_key(self, kid: str) -> EabKey | None:
        async with self._engines.reader.connect() as conn:
            row = (await conn.execute(select(eab_keys).where(eab_keys.c.kid == kid))).first()
        return _eab_from_row(row) if row else None

    async def list_eab_keys(self) -> list[EabKey]:
        async with self._engines.reader.connect() as conn:
            rows = (await conn.execute(select(eab_keys).order_by(eab_keys.c.created_at))).all()
        return [_eab_from_row(r) for r in rows]

    async def revoke_eab_key(self, kid: str) -> bool:
        """False when the key does not exist or was revoked before."""
        async with self._engines.writer.begin() as conn:
            result = await conn.execute(
                update(eab_keys)
                .where(eab_keys.c.kid == kid, eab_keys.c.revoked_at.is_(None))
                .values(revoked_at=codec.to_us(self._clock.now()))
            )
        return result.rowcount == 1

    async def bind_eab_key(self, kid: str, account_id: str, *, allow_many: bool) -> bool:
        """Record a binding, guarded in SQL: False if revoked, or already bound and not many."""
        condition = [eab_keys.c.kid == kid, eab_keys.c.revoked_at.is_(None)]
        if not allow_many:
            condition.append(eab_keys.c.bind_count == 0)
        async with self._engines.writer.begin() as conn:
            result = await conn.execute(
                update(eab_keys)
                .where(*condition)
                .values(
                    bind_count=eab_keys.c.bind_count + 1,
                    account_id=func.coalesce(eab_keys.c.account_id, account_id),
                )
            )
        return result.rowcount == 1

    async def release_eab_key(self, kid: str, account_id: str) -> None:
        """Undo `bind_eab_key` when the account was not created after all."""
        async with self._engines.writer.begin() as conn:
            await conn.execute(
                update(eab_keys)
                .where(eab_keys.c.kid == kid, eab_keys.c.bind_count > 0)
                .values(bind_count=eab_keys.c.bind_count - 1)
            )
            await conn.execute(
                update(eab_keys)
                .where(
                    eab_keys.c.kid == kid,
                    eab_keys.c.account_id == account_id,
                    eab_keys.c.bind_count == 0,
                )
                .values(account_id=None)
            )

    # ---- rate-limit counters -------------------------------------------------------

    async def bump_counters(self, items: Iterable[tuple[str, str]], *, bucket: int) -> None:
        """Add one event to each (limit name, key) in the given time bucket."""
        rows = [(n, k[:255], bucket) for n, k in sorted(set(items))]
        if rows:
            # One unit of work: this runs on every issuance and failed validation.
            await self._engines.db.write(lambda sql: sql.many(UPSERT_COUNTER, rows))

    async def counter_totals(
        self, queries: Sequence[tuple[str, str, int]]
    ) -> dict[tuple[str, str], CounterTotal]:
        """Per (limit name, key, first bucket in the window): the events in the window."""
        if not queries:
            return {}
        # One statement whatever the number of checks: fetch the buckets of every
        # (name, key) from the earliest window start, then sum per window here.
        names = sorted({name for name, _, _ in queries})
        keys = sorted({key[:255] for _, key, _ in queries})
        first_bucket = min(first for _, _, first in queries)
        text = (
            "SELECT name, key, bucket, count FROM rate_counters"  # noqa: S608 - only '?' marks
            f" WHERE name IN ({', '.join('?' * len(names))})"
            f" AND key IN ({', '.join('?' * len(keys))}) AND bucket >= ?"
        )
        params = (*names, *keys, first_bucket)
        rows = await self._engines.db.read(lambda sql: sql.all(text, params))
        buckets: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for m in rows:
            buckets.setdefault((m["name"], m["key"]), []).append(
                (int(m["bucket"]), int(m["count"]))
            )
        totals: dict[tuple[str, str], CounterTotal] = {}
        for name, key, first in queries:
            counted = [(b, c) for b, c in buckets.get((name, key[:255]), ()) if b >= first]
            totals[(name, key)] = CounterTotal(
                count=sum(c for _, c in counted),
                oldest_bucket=min((b for b, _ in counted), default=None),
            )
        return totals

    async def purge_counters(self, *, before_bucket_us: int) -> int:
        """Drop counter rows whose bucket started before the given time (µs since the epoch)."""
        async with self._engines.writer.begin() as conn:
            result = await conn.execute(
                delete(rate_counters).where(rate_counters.c.bucket < before_bucket_us)
            )
        return result.rowcount

    async def account_activity(
        self, account_id: str, *, orders_since: dt.datetime, orders_cap: int, now: dt.datetime
    ) -> tuple[WindowCount, WindowCount]:
        """(orders created since `orders_since`, up to `orders_cap`; live pending authzs)."""
        params = (
            account_id,
            codec.to_us(orders_since),
            max(orders_cap, 1),
            account_id,
            AuthzStatus.PENDING,
            codec.to_us(now),
        )
        row = await self._engines.db.read(lambda sql: sql.one(_ACCOUNT_ACTIVITY, params))
        assert row is not None  # aggregates always answer one row
        return (
            WindowCount(count=int(row["orders"]), oldest=codec.opt_from_us(row["oldest_order"])),
            WindowCount(count=int(row["pending"]), oldest=codec.opt_from_us(row["first_expiry"])),
        )

    # ---- pre-authorization (RFC 8555 §7.4.1) -----------------------------------------

    async def create_authz(self, authz: Authorization) -> bool:
        """Insert an authorization that belongs to no order (yet); False (nothing
        written) when its account is no longer valid (RFC 8555 §7.3.6)."""
        return await self._engines.db.write(insert_authz_of_valid_account, authz)

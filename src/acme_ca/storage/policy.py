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

from sqlalchemy import Integer, Row, Select, bindparam, delete, func, insert, select, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Executable

from acme_ca.clock import Clock
from acme_ca.model import Authorization, AuthzStatus
from acme_ca.storage import codec
from acme_ca.storage.engine import Engines
from acme_ca.storage.schema import authzs, challenges, eab_keys, orders, rate_counters

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


def _account_activity_statement() -> Select[Any]:
    """Both counts use an index on the account's ID; the orders count stops at the cap,
    so a busy account costs no more than its limit."""
    recent = (
        select(orders.c.created_at)
        .where(
            orders.c.account_id == bindparam("account_id"),
            orders.c.created_at >= bindparam("since"),
        )
        .order_by(orders.c.created_at.desc())
        .limit(bindparam("cap", type_=Integer))
        .subquery()
    )
    order_stats = (
        select(func.count().label("n"), func.min(recent.c.created_at).label("oldest"))
        .select_from(recent)
        .subquery()
    )
    pending_stats = (
        select(func.count().label("n"), func.min(authzs.c.expires).label("first"))
        .where(
            authzs.c.account_id == bindparam("account_id"),
            authzs.c.status == AuthzStatus.PENDING,
            authzs.c.expires > bindparam("now"),
        )
        .subquery()
    )
    return select(
        order_stats.c.n.label("orders"),
        order_stats.c.oldest.label("oldest_order"),
        pending_stats.c.n.label("pending"),
        pending_stats.c.first.label("first_expiry"),
    ).select_from(order_stats.join(pending_stats, true()))


# Built once: compiling a statement costs more than running it on SQLite.
_COUNTER_ROW: dict[str, Any] = {
    "name": bindparam("name"),
    "key": bindparam("key"),
    "bucket": bindparam("bucket"),
}
_UPSERT_SQLITE = (
    sqlite_insert(rate_counters)
    .values(count=1, **_COUNTER_ROW)
    .on_conflict_do_update(
        index_elements=["name", "key", "bucket"], set_={"count": rate_counters.c.count + 1}
    )
)
_UPSERT_PG = (
    pg_insert(rate_counters)
    .values(count=1, **_COUNTER_ROW)
    .on_conflict_do_update(
        index_elements=["name", "key", "bucket"], set_={"count": rate_counters.c.count + 1}
    )
)
_ACCOUNT_ACTIVITY = _account_activity_statement()
_COUNTER_ROWS = select(
    rate_counters.c.name, rate_counters.c.key, rate_counters.c.bucket, rate_counters.c.count
).where(
    rate_counters.c.name.in_(bindparam("names", expanding=True)),
    rate_counters.c.key.in_(bindparam("keys", expanding=True)),
    rate_counters.c.bucket >= bindparam("first"),
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
        rows = [{"name": n, "key": k[:255], "bucket": bucket} for n, k in sorted(set(items))]
        if not rows:
            return
        upsert = _UPSERT_PG if self._engines.dialect == "postgresql" else _UPSERT_SQLITE
        # One executor hop: this runs on every issuance and failed validation.
        await self._engines.writer.transaction(_execute_rows, upsert, rows)

    async def counter_totals(
        self, queries: Sequence[tuple[str, str, int]]
    ) -> dict[tuple[str, str], CounterTotal]:
        """Per (limit name, key, first bucket in the window): the events in the window."""
        if not queries:
            return {}
        # One prepared statement whatever the number of checks: fetch the buckets of
        # every (name, key) from the earliest window start, then sum per window here.
        params = {
            "names": sorted({name for name, _, _ in queries}),
            "keys": sorted({key[:255] for _, key, _ in queries}),
            "first": min(first for _, _, first in queries),
        }
        async with self._engines.reader.connect() as conn:
            rows = (await conn.execute(_COUNTER_ROWS, params)).all()
        buckets: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for row in rows:
            # By mapping: `Row.count` is the tuple method, not the column.
            m = row._mapping
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
        """(orders created since `orders_since`, up to `orders_cap`; live pending authzs).

        One statement: both counts use an index on the account's ID, and the orders
        count stops at the cap, so a busy account costs no more than its limit.
        """
        async with self._engines.reader.connect() as conn:
            row = (
                await conn.execute(
                    _ACCOUNT_ACTIVITY,
                    {
                        "account_id": account_id,
                        "since": codec.to_us(orders_since),
                        "cap": max(orders_cap, 1),
                        "now": codec.to_us(now),
                    },
                )
            ).first()
        assert row is not None  # aggregates always answer one row
        return (
            WindowCount(count=int(row.orders), oldest=codec.opt_from_us(row.oldest_order)),
            WindowCount(count=int(row.pending), oldest=codec.opt_from_us(row.first_expiry)),
        )

    # ---- pre-authorization (RFC 8555 §7.4.1) -----------------------------------------

    async def create_authz(self, authz: Authorization) -> None:
        """Insert an authorization that belongs to no order (yet)."""
        async with self._engines.writer.begin() as conn:
            await conn.execute(
                insert(authzs).values(
                    id=authz.id,
                    account_id=authz.account_id,
                    identifier_type=authz.identifier.type,
                    identifier_value=authz.identifier.value,
                    wildcard=authz.wildcard,
                    status=authz.status,
                    expires=codec.to_us(authz.expires),
                    created_at=codec.to_us(authz.created_at),
                )
            )
            await conn.execute(
                insert(challenges),
                [
                    {
                        "id": c.id,
                        "authz_id": authz.id,
                        "type": c.type,
                        "token": c.token,
                        "status": c.status,
                        "validated": None,
                        "error": None,
                        "validation_record": None,
                    }
                    for c in authz.challenges
                ],
            )


def _execute_rows(conn: Connection, statement: Executable, rows: list[dict[str, object]]) -> None:
    conn.execute(statement, rows)

"""The storage authority: every query the CA makes, each a short unit of work.

`StorageReader` is what the web front end gets; only the RA holds a `Storage`
(read-write). State transitions are guarded in SQL (`UPDATE ... WHERE status = ...`)
so that concurrent processes sharing one database cannot both win a transition.
The SQL is plain text run on the drivers' connections (`database`): the same text
on SQLite and PostgreSQL; the tables are defined in `schema` and made by Alembic.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any, Literal, Protocol

from acme_ca.clock import Clock
from acme_ca.errors import AcmeError, Identifier, ProblemType
from acme_ca.model import (
    Account,
    AccountStatus,
    Authorization,
    AuthzStatus,
    Certificate,
    Challenge,
    ChallengeStatus,
    Order,
    OrderStatus,
    RevocationReason,
)
from acme_ca.storage import codec
from acme_ca.storage.database import Database, IntegrityError, Row, Sql
from acme_ca.storage.engine import Engines
from acme_ca.storage.nonce_log import boot_id

__all__ = ["KeyChange", "NonceScopeChanged", "OrderOutcome", "Storage", "StorageReader"]


class NonceScopeChanged(Exception):
    """PostgreSQL restarted since this process bound its nonce key to the server's
    start: redemptions made before it may be gone (`used_nonces` is unlogged), so
    nonces issued before it are refused; reload the scope (`load_nonce_scope`)."""


# PostgreSQL: the server's start, in µs; `used_nonces` (UNLOGGED, migration 0007) is
# emptied by a crash, and every start changes this.
_PG_START = "CAST(EXTRACT(EPOCH FROM pg_postmaster_start_time()) * 1000000 AS BIGINT)"
_REDEEM_PG = "INSERT INTO used_nonces (value, expires) SELECT ?, ? WHERE " + _PG_START + " = ?"
_REDEEM_FOR_ACCOUNT_PG = (
    _REDEEM_PG + " AND EXISTS"  # noqa: S608 - put together from constants only
    " (SELECT 1 FROM accounts WHERE id = ? AND status = ? AND thumbprint = ?)"
)

KeyChange = Literal["changed", "in use", "stale"]
OrderOutcome = Literal["created", "replaced", "account deactivated", "authz gone"]


class StorageReader(Protocol):
    """The read-only view the web front end gets."""

    async def get_account(self, account_id: str) -> Account | None: ...
    async def get_account_by_thumbprint(self, thumbprint: str) -> Account | None: ...
    async def get_order(self, order_id: str) -> Order | None: ...
    async def get_authz(self, authz_id: str) -> Authorization | None: ...
    async def get_certificate(self, cert_id: str) -> Certificate | None: ...
    async def get_certificate_by_serial(self, serial: str) -> Certificate | None: ...
    async def list_order_ids(
        self, account_id: str, *, after: tuple[int, str] | None, limit: int
    ) -> tuple[list[str], tuple[int, str] | None]: ...
    @property
    def checks_accounts_at_redemption(self) -> bool: ...


# Every row of a new order or pre-authorization is inserted `WHERE` a guard holds (its
# parameters follow the row's), so that a unit sends all of them at once and a failed
# guard leaves no trace: the order's guard is its account and reused authorizations,
# the rows after it are guarded on the order row (`_ORDER_MADE`).
_INSERT_AUTHZ = (
    "INSERT INTO authzs (id, account_id, identifier_type, identifier_value, wildcard, status,"
    " expires, created_at) SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE"
)


def _insert_challenges(count: int) -> str:
    """An authorization's `count` challenges in one statement (a statement per row cost
    SQLite and PostgreSQL their per-statement work twice more per new authorization);
    its parameters are five per challenge, then the guard's. `columnN` are the names
    SQLite and PostgreSQL both give a VALUES list's columns."""
    rows = ", ".join(["(?, ?, ?, ?, ?)"] * count)
    return (
        "INSERT INTO challenges (id, authz_id, type, token, status, validated, error,"  # noqa: S608
        " validation_record) SELECT v.column1, v.column2, v.column3, v.column4, v.column5,"
        f" NULL, NULL, NULL FROM (VALUES {rows}) AS v WHERE"
    )


# PostgreSQL: a new order (without `replaces`) as one statement of data-modifying CTEs,
# so one asyncpg round trip without BEGIN and COMMIT instead of a pipelined psycopg
# transaction of 5 statements (psycopg's client side costs 40-65 µs per statement
# here, asyncpg's 14-26; benchmarks/pg_drivers.py). The guards are the locking reads
# themselves: in READ COMMITTED a `FOR SHARE` that waited for a deactivation to commit
# re-evaluates its WHERE on the new row version (EvalPlanQual), so a deactivated
# account or reused authz drops out of `acc` / `reused` and nothing is inserted; the
# rows after the order are inserted only for the order row `made` returns.
def _create_order_pg(new_authzs: Sequence[Authorization], reused: int, links: int) -> str:
    text = "WITH acc AS (SELECT id FROM accounts WHERE id = ? AND status = ? FOR SHARE)"
    if reused:
        text += (
            f", reused AS (SELECT id FROM authzs WHERE id IN ({', '.join('?' * reused)})"  # noqa: S608
            " AND status IN (?, ?) FOR SHARE)"
        )
    text += (
        ", made AS (INSERT INTO orders (id, account_id, status, identifiers, authz_ids,"
        " expires, not_before, not_after, error, certificate_id, profile, replaces,"
        " created_at) SELECT ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?, ? FROM acc"
    )
    if reused:
        text += " WHERE (SELECT count(*) FROM reused) = ?"
    text += " RETURNING id)"
    if new_authzs:
        rows = ", ".join(
            ["(?, ?, ?, ?, CAST(? AS BOOLEAN), ?, CAST(? AS BIGINT), CAST(? AS BIGINT))"]
            * len(new_authzs)
        )
        text += (
            ", authorized AS (INSERT INTO authzs (id, account_id, identifier_type,"  # noqa: S608
            " identifier_value, wildcard, status, expires, created_at) SELECT v.column1,"
            " v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, v.column8"
            f" FROM (VALUES {rows}) AS v, made)"
        )
    challenges = sum(len(a.challenges) for a in new_authzs)
    if challenges:
        # The rows only for the order row inserted: the same guard as `_ORDER_MADE`.
        insert = _insert_challenges(challenges) + " EXISTS (SELECT 1 FROM made)"  # noqa: S608
        text += f", challenged AS ({insert})"
    if links:
        rows = ", ".join(["(?)"] * links)
        text += (
            ", linked AS (INSERT INTO order_authzs (order_id, authz_id)"  # noqa: S608
            f" SELECT made.id, v.column1 FROM (VALUES {rows}) AS v, made)"
        )
    return text + " SELECT 1 FROM made"  # noqa: S608 - put together from constants only


_INSERT_ORDER = (
    "INSERT INTO orders (id, account_id, status, identifiers, authz_ids, expires,"
    " not_before, not_after, error, certificate_id, profile, replaces, created_at)"
    " SELECT ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?, ? WHERE"
)
_INSERT_ORDER_AUTHZ = "INSERT INTO order_authzs (order_id, authz_id) SELECT ?, ? WHERE"
# RFC 8555 §7.3.6: a deactivated account can do nothing, so nothing is made for one
# whose deactivation committed after its request was verified.
_ACCOUNT_VALID = " EXISTS (SELECT 1 FROM accounts WHERE id = ? AND status = ?)"
_ORDER_MADE = " EXISTS (SELECT 1 FROM orders WHERE id = ?)"
# PostgreSQL, first in the unit: in READ COMMITTED the guards above read the last
# committed state, so an account (or a reused authz) whose deactivation has run but not
# committed would pass them, and the deactivation would not see the rows inserted
# after its statements ran. Share locks wait for such a deactivation to commit (the
# guards, statements of their own, then see it), or make it wait for this unit.
_LOCK_ACCOUNT_PG = "SELECT id FROM accounts WHERE id = ? FOR SHARE"


def _reused_alive(count: int) -> str:
    """The guard that the order's `count` reused authorizations are still valid or
    pending (not deactivated or failed since `find_reusable_authz` found them); its
    parameters are their IDs, the two statuses, and `count`."""
    return (
        f" AND (SELECT count(*) FROM authzs WHERE id IN ({', '.join('?' * count)})"  # noqa: S608
        " AND status IN (?, ?)) = ?"
    )


def _lock_authzs_pg(count: int) -> str:
    return f"SELECT id FROM authzs WHERE id IN ({', '.join('?' * count)}) FOR SHARE"  # noqa: S608


# `status || ''` keeps the planners off `ix_orders_status`: driven by that index the
# query walks every pending order in the database (abandoned orders stay pending), by
# the authz's `order_authzs` rows it reads one or two.
_LOCK_ORDERS_OF_AUTHZ_PG = (
    "SELECT orders.id FROM orders"
    " JOIN order_authzs ON order_authzs.order_id = orders.id"
    " WHERE order_authzs.authz_id = ? AND orders.status || '' = ? FOR UPDATE OF orders"
)
_OF_AUTHZ = "id IN (SELECT order_id FROM order_authzs WHERE authz_id = ?) AND status || '' = ?"
# pending → ready when every authz of the order is valid and alive.
_ALL_VALID = (
    " AND NOT EXISTS (SELECT 1 FROM order_authzs AS mine"
    " JOIN authzs ON authzs.id = mine.authz_id"
    " WHERE mine.order_id = orders.id AND (authzs.status <> ? OR authzs.expires <= ?))"
)
# The texts below are put together from constants only.
_READY_ORDERS_OF_AUTHZ = "UPDATE orders SET status = ? WHERE " + _OF_AUTHZ + _ALL_VALID  # noqa: S608
_INVALID_ORDERS_OF_AUTHZ = "UPDATE orders SET status = ?, error = ? WHERE " + _OF_AUTHZ  # noqa: S608
_READY_ORDER = "UPDATE orders SET status = ? WHERE id = ? AND status = ?" + _ALL_VALID  # noqa: S608
_STALE_JOBS = "SELECT kind, target_id, lease_until FROM jobs WHERE lease_until < ? LIMIT ?"
_STALE_JOBS_PG = _STALE_JOBS + " FOR UPDATE SKIP LOCKED"
UPSERT_COUNTER = (
    "INSERT INTO rate_counters (name, key, bucket, count) VALUES (?, ?, ?, 1)"
    " ON CONFLICT (name, key, bucket) DO UPDATE SET count = rate_counters.count + 1"
)
"""Add one event to a rate-limit counter (shared with the policy store)."""
_EXPIRE_REPLACING = (
    "UPDATE orders SET status = ?, error = ? WHERE replaces = ? AND status IN (?, ?)"
    " AND expires <= ?"
)
_ORDER_EXPIRED = codec.error_to_json(AcmeError(type=ProblemType.MALFORMED, detail="Order expired"))
_INSERT_JOB = "INSERT INTO jobs (kind, target_id, lease_until, attempts) VALUES (?, ?, ?, 1)"
_START_CHALLENGE = (
    # The authz is pending and alive, and (RFC 8555 §7.1.6) no other challenge of it
    # is being or was attempted.
    "UPDATE challenges SET status = ? WHERE id = ? AND authz_id = ? AND status = ?"
    " AND EXISTS (SELECT 1 FROM authzs WHERE id = ? AND status = ? AND expires > ?)"
    " AND NOT EXISTS (SELECT 1 FROM challenges AS other"
    " WHERE other.authz_id = ? AND other.status <> ?)"
)
_BEGIN_FINALIZE = (
    "UPDATE orders SET status = ?, csr = ?, serial = ? WHERE id = ? AND status = ? AND expires > ?"
)


def _with_job_pg(update: str, kind: str) -> str:
    """PostgreSQL: the guarded UPDATE and the job it queues as one statement (the job
    row only if the UPDATE changed one), so one round trip without BEGIN and COMMIT;
    its parameters are the UPDATE's, then the job's lease."""
    return (
        f"WITH moved AS ({update} RETURNING id)"  # noqa: S608
        " INSERT INTO jobs (kind, target_id, lease_until, attempts)"
        f" SELECT '{kind}', id, ?, 1 FROM moved"
    )


_START_CHALLENGE_PG = _with_job_pg(_START_CHALLENGE, "validate")
# PostgreSQL: the starts of two challenges of one authz update different rows, so in
# READ COMMITTED each UPDATE's NOT EXISTS, on its own snapshot, would see the other
# challenge still pending and both would start. Locking the authz row first, in the
# same implicit transaction, makes the second start wait for the first to commit; its
# UPDATE then takes a new snapshot that sees the first challenge processing.
_LOCK_AUTHZ_PG = "SELECT id FROM authzs WHERE id = ? FOR UPDATE"
_BEGIN_FINALIZE_PG = _with_job_pg(_BEGIN_FINALIZE, "issue")
# The certificate's statements after the order's UPDATE hold only if that UPDATE made
# the order valid with this (new) certificate ID: one round trip for all of them.
_ISSUED = " EXISTS (SELECT 1 FROM orders WHERE id = ? AND certificate_id = ?)"
_INSERT_CERTIFICATE_IF_ISSUED = (
    "INSERT INTO certificates (id, serial, account_id, order_id, identifiers,"
    " pem_chains, spki_sha256, not_before, not_after, issued_at)"
    " SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE" + _ISSUED
)
_DELETE_ISSUE_JOB_IF_ISSUED = (
    "DELETE FROM jobs WHERE kind = 'issue' AND target_id = ? AND" + _ISSUED  # noqa: S608
)
_UPSERT_COUNTER_IF_ISSUED = (
    "INSERT INTO rate_counters (name, key, bucket, count) SELECT ?, ?, ?, 1 WHERE"
    + _ISSUED
    + " ON CONFLICT (name, key, bucket) DO UPDATE SET count = rate_counters.count + 1"
)


def _finish_issuance_pg(counters: int) -> str:
    """PostgreSQL: the order made valid, its certificate stored, its job deleted and
    `counters` rate-limit counters bumped, as one statement (one asyncpg round trip);
    every row after the order's only if the UPDATE made it valid with this certificate."""
    text = (
        "WITH issued AS (UPDATE orders SET status = ?, certificate_id = ?"
        " WHERE id = ? AND status = ? RETURNING id),"
        " stored AS (INSERT INTO certificates (id, serial, account_id, order_id, identifiers,"
        " pem_chains, spki_sha256, not_before, not_after, issued_at)"
        " SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM issued),"
        " done AS (DELETE FROM jobs WHERE kind = 'issue' AND target_id = ?"
        " AND EXISTS (SELECT 1 FROM issued))"
    )
    if counters:
        # One INSERT for all (a key named twice would be a second change of one row in
        # one statement, which PostgreSQL refuses): the caller merges repeated keys.
        rows = ", ".join(["(?, ?, CAST(? AS BIGINT), CAST(? AS INTEGER))"] * counters)
        text += (
            ", counted AS (INSERT INTO rate_counters (name, key, bucket, count)"  # noqa: S608
            " SELECT v.column1, v.column2, v.column3, v.column4"
            f" FROM (VALUES {rows}) AS v, issued"
            " ON CONFLICT (name, key, bucket) DO UPDATE SET count = rate_counters.count"
            " + EXCLUDED.count)"
        )
    return text + " SELECT 1 FROM issued"  # noqa: S608 - put together from constants only


# The orders list (RFC 8555 §7.1.2.1) by `ix_orders_account_created`: the account's
# orders in creation order, the invalid ones (expired ones included) left out.
_LIST_ORDERS = (
    "SELECT id, created_at FROM orders WHERE account_id = ?"
    " AND status <> ? AND (status NOT IN (?, ?) OR expires > ?)"
)
_LIST_ORDERS_AFTER = " AND (created_at > ? OR (created_at = ? AND id > ?))"
_LIST_ORDERS_PAGE = " ORDER BY created_at, id LIMIT ?"


async def _one(sql: Sql, text: str, params: Sequence[Any]) -> Row | None:
    return await sql.one(text, params)


async def _all(sql: Sql, text: str, params: Sequence[Any]) -> list[Row]:
    return await sql.all(text, params)


_AUTHZ_WITH_CHALLENGES = (
    "SELECT a.id, a.account_id, a.identifier_type, a.identifier_value, a.wildcard, a.status,"
    " a.expires, a.created_at, c.id AS c_id, c.type AS c_type, c.token AS c_token,"
    " c.status AS c_status, c.validated AS c_validated, c.error AS c_error,"
    " c.validation_record AS c_validation_record"
    " FROM authzs a LEFT JOIN challenges c ON c.authz_id = a.id"
)
_AUTHZ_BY_ID = _AUTHZ_WITH_CHALLENGES + " WHERE a.id = ? ORDER BY c.id"
_CHALLENGE_COLUMNS = ("type", "token", "status", "validated", "error", "validation_record")
_ACCOUNT_COLUMNS = (
    "status",
    "jwk",
    "thumbprint",
    "contact",
    "tos_agreed",
    "tos_agreed_url",
    "eab_kid",
    "created_at",
)
# The authz of a challenge, its challenges and the account that owns it: one statement.
_VALIDATION_SUBJECT = (
    "SELECT a.id, a.account_id, a.identifier_type, a.identifier_value, a.wildcard, a.status,"  # noqa: S608
    " a.expires, a.created_at, c.id AS c_id, c.type AS c_type, c.token AS c_token,"
    " c.status AS c_status, c.validated AS c_validated, c.error AS c_error,"
    " c.validation_record AS c_validation_record, "
    + ", ".join(f"acc.{k} AS acc_{k}" for k in _ACCOUNT_COLUMNS)
    + " FROM authzs a JOIN accounts acc ON acc.id = a.account_id"
    " LEFT JOIN challenges c ON c.authz_id = a.id"
    " WHERE a.id = (SELECT authz_id FROM challenges WHERE id = ?) ORDER BY c.id"
)


def _split_authz(rows: list[Row]) -> tuple[Row, list[Row]] | None:
    """One statement's rows (authz joined with its challenges) as (authz, challenges)."""
    if not rows:
        return None
    first = rows[0]
    challenges = [
        {"id": r["c_id"], "authz_id": first["id"], **{k: r[f"c_{k}"] for k in _CHALLENGE_COLUMNS}}
        for r in rows
        if r["c_id"] is not None
    ]
    return first, challenges


async def _authz_rows(sql: Sql, authz_id: str) -> tuple[Row, list[Row]] | None:
    # One statement: one snapshot, and one round trip on PostgreSQL.
    return _split_authz(await sql.all(_AUTHZ_BY_ID, (authz_id,)))


def _order_values(order: Order) -> tuple[Any, ...]:
    """The order's columns as `_INSERT_ORDER` and `_create_order_pg` take them."""
    return (
        order.id,
        order.account_id,
        order.status,
        codec.identifiers_to_json(order.identifiers),
        json.dumps(list(order.authz_ids)),
        codec.to_us(order.expires),
        codec.opt_to_us(order.not_before),
        codec.opt_to_us(order.not_after),
        order.profile,
        order.replaces,
        codec.to_us(order.created_at),
    )


def _authz_values(a: Authorization) -> tuple[Any, ...]:
    """The authorization's columns as `_INSERT_AUTHZ` and `_create_order_pg` take them."""
    return (
        a.id,
        a.account_id,
        a.identifier.type,
        a.identifier.value,
        a.wildcard,
        a.status,
        codec.to_us(a.expires),
        codec.to_us(a.created_at),
    )


def _challenge_values(authz: Authorization, c: Challenge) -> tuple[Any, ...]:
    return (c.id, authz.id, c.type, c.token, c.status)


def _authz_inserts(
    new_authzs: Sequence[Authorization], guard: str, guard_params: tuple[Any, ...]
) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements that insert authorizations with their challenges, each row only
    if `guard` holds."""
    statements: list[tuple[str, tuple[Any, ...]]] = []
    for a in new_authzs:
        statements.append((_INSERT_AUTHZ + guard, (*_authz_values(a), *guard_params)))
        if a.challenges:
            values = [v for c in a.challenges for v in _challenge_values(a, c)]
            statements.append(
                (_insert_challenges(len(a.challenges)) + guard, (*values, *guard_params))
            )
    return statements


async def insert_authz_of_valid_account(sql: Sql, authz: Authorization) -> bool:
    """Insert a pre-authorization (RFC 8555 §7.4.1, shared with the policy store) only
    if its account is still valid; whether it was. One round trip on PostgreSQL."""
    account = (authz.account_id, AccountStatus.VALID)
    lock = [(_LOCK_ACCOUNT_PG, (authz.account_id,))] if sql.postgres else []
    counts = await sql.finish([*lock, *_authz_inserts([authz], _ACCOUNT_VALID, account)])
    return counts[len(lock)] == 1


class Storage:
    """Read-write storage; the RA is its only writer."""

    def __init__(self, engines: Engines, clock: Clock) -> None:
        self._engines = engines
        self._db: Database = engines.db
        self._clock = clock
        self._for_update = engines.dialect != "sqlite"
        self._postgres = self._for_update
        self._pg_started: int | None = None
        """PostgreSQL's start (µs) that this process's nonce key is bound to."""

    @property
    def engines(self) -> Engines:
        return self._engines

    def _authz(self, found: tuple[Row, list[Row]]) -> Authorization:
        row, chall_rows = found
        return codec.authz_from_row(
            row, [codec.challenge_from_row(c) for c in chall_rows], self._clock.now()
        )

    # ---- reads -------------------------------------------------------------

    async def get_account(self, account_id: str) -> Account | None:
        row = await self._db.read(_one, "SELECT * FROM accounts WHERE id = ?", (account_id,))
        return codec.account_from_row(row) if row else None

    async def get_account_by_thumbprint(self, thumbprint: str) -> Account | None:
        row = await self._db.read(
            _one, "SELECT * FROM accounts WHERE thumbprint = ?", (thumbprint,)
        )
        return codec.account_from_row(row) if row else None

    async def get_order(self, order_id: str) -> Order | None:
        row = await self._db.read(_one, "SELECT * FROM orders WHERE id = ?", (order_id,))
        return codec.order_from_row(row, self._clock.now()) if row else None

    async def list_order_ids(
        self, account_id: str, *, after: tuple[int, str] | None, limit: int
    ) -> tuple[list[str], tuple[int, str] | None]:
        """A page of the account's orders that are not invalid, oldest first, and the
        cursor of the next page (None on the last).

        RFC 8555 §7.1.2.1: invalid orders SHOULD NOT be listed; that includes pending
        and ready orders past their expiry (invalid when read, `codec.order_from_row`).
        Left out in SQL, so a page is full whenever enough orders remain.
        """
        live = (
            OrderStatus.INVALID,
            OrderStatus.PENDING,
            OrderStatus.READY,
            codec.to_us(self._clock.now()),
        )
        if after is None:
            text = _LIST_ORDERS + _LIST_ORDERS_PAGE
            params: tuple[Any, ...] = (account_id, *live, limit + 1)
        else:
            created, last_id = after
            text = _LIST_ORDERS + _LIST_ORDERS_AFTER + _LIST_ORDERS_PAGE
            params = (account_id, *live, created, created, last_id, limit + 1)
        rows = await self._db.read(_all, text, params)
        page = rows[:limit]
        cursor = (page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit else None
        return [r["id"] for r in page], cursor

    async def get_authz(self, authz_id: str) -> Authorization | None:
        found = await self._db.read(_authz_rows, authz_id)
        return self._authz(found) if found is not None else None

    async def get_validation_subject(
        self, challenge_id: str
    ) -> tuple[Authorization, Account] | None:
        """The authorization of a challenge and the account that owns it, in one read."""

        found = _split_authz(await self._db.read(_all, _VALIDATION_SUBJECT, (challenge_id,)))
        if found is None:
            return None
        first = found[0]
        account = {"id": first["account_id"], **{k: first[f"acc_{k}"] for k in _ACCOUNT_COLUMNS}}
        return self._authz(found), codec.account_from_row(account)

    async def get_certificate(self, cert_id: str) -> Certificate | None:
        row = await self._db.read(_one, "SELECT * FROM certificates WHERE id = ?", (cert_id,))
        return codec.certificate_from_row(row) if row else None

    async def get_certificate_by_serial(self, serial: str) -> Certificate | None:
        row = await self._db.read(_one, "SELECT * FROM certificates WHERE serial = ?", (serial,))
        return codec.certificate_from_row(row) if row else None

    async def find_reusable_authz(
        self, account_id: str, identifier: Identifier, *, wildcard: bool, valid_after: dt.datetime
    ) -> Authorization | None:
        """A valid or pending authz of this account for the identifier, alive past `valid_after`."""

        async def run(sql: Sql) -> tuple[Row, list[Row]] | None:
            row = await sql.one(
                "SELECT id FROM authzs WHERE account_id = ? AND identifier_type = ?"
                " AND identifier_value = ? AND wildcard = ? AND status IN (?, ?) AND expires > ?"
                # Prefer valid over pending, then the longest-lived.
                " ORDER BY status DESC, expires DESC LIMIT 1",
                (
                    account_id,
                    identifier.type,
                    identifier.value,
                    wildcard,
                    AuthzStatus.VALID,
                    AuthzStatus.PENDING,
                    codec.to_us(valid_after),
                ),
            )
            return await _authz_rows(sql, row["id"]) if row is not None else None

        found = await self._db.read(run)
        return self._authz(found) if found is not None else None

    async def has_valid_authzs(
        self, account_id: str, identifiers: Sequence[Identifier], now: dt.datetime
    ) -> bool:
        """Whether the account holds a live valid authz for each identifier (RFC 8555 §7.6)."""

        async def run(sql: Sql) -> bool:
            for identifier in identifiers:
                row = await sql.one(
                    "SELECT id FROM authzs WHERE account_id = ? AND identifier_type = ?"
                    " AND identifier_value = ? AND status = ? AND expires > ? LIMIT 1",
                    (
                        account_id,
                        identifier.type,
                        identifier.value.removeprefix("*."),
                        AuthzStatus.VALID,
                        codec.to_us(now),
                    ),
                )
                if row is None:
                    return False
            return True

        return await self._db.read(run)

    async def is_key_blocked(self, spki_sha256: str) -> bool:
        """Whether a certificate for this key was revoked for keyCompromise (RFC 5280 §5.3.1)."""
        row = await self._db.read(
            _one,
            "SELECT id FROM certificates WHERE spki_sha256 = ? AND revocation_reason = ? LIMIT 1",
            (spki_sha256, int(RevocationReason.KEY_COMPROMISE)),
        )
        return row is not None

    # ---- accounts ----------------------------------------------------------

    async def create_account(self, account: Account) -> Account:
        """Insert; if the key is already registered, return that account instead."""
        params = (
            account.id,
            account.status,
            codec.dumps(account.jwk),
            account.thumbprint,
            codec.dumps(list(account.contact)),
            account.tos_agreed,
            account.tos_agreed_url,
            account.eab_kid,
            codec.to_us(account.created_at),
        )
        try:
            await self._db.write(
                lambda sql: sql.send(
                    "INSERT INTO accounts (id, status, jwk, thumbprint, contact, tos_agreed,"
                    " tos_agreed_url, eab_kid, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    params,
                )
            )
        except IntegrityError:
            existing = await self.get_account_by_thumbprint(account.thumbprint)
            if existing is None:
                raise
            return existing
        return account

    async def update_account(self, account: Account) -> None:
        """Contact and terms agreement (RFC 8555 §7.3.2, §7.3.3). Status changes only by
        `deactivate_account`: a concurrent deactivation is not undone by this write."""
        params = (
            codec.dumps(list(account.contact)),
            account.tos_agreed,
            account.tos_agreed_url,
            account.id,
            AccountStatus.VALID,
        )
        await self._db.write(
            lambda sql: sql.send(
                "UPDATE accounts SET contact = ?, tos_agreed = ?, tos_agreed_url = ?"
                " WHERE id = ? AND status = ?",
                params,
            )
        )

    async def deactivate_account(self, account_id: str) -> None:
        """RFC 8555 §7.3.6: also deactivates the account's pending authorizations and
        cancels its pending and ready orders ("the server SHOULD cancel any pending
        operations authorized by the account's key, such as certificate orders").

        A finalize verified before this commits then finds its order no longer ready
        (`begin_finalize` is guarded on `ready`), so no certificate is issued to a
        deactivated account; one already `processing` was accepted before and ends."""
        error = codec.error_to_json(
            AcmeError(type=ProblemType.UNAUTHORIZED, detail="The account was deactivated")
        )

        async def run(sql: Sql) -> None:
            await sql.send(
                "UPDATE accounts SET status = ? WHERE id = ?",
                (AccountStatus.DEACTIVATED, account_id),
            )
            await sql.send(
                "UPDATE authzs SET status = ? WHERE account_id = ? AND status = ?",
                (AuthzStatus.DEACTIVATED, account_id, AuthzStatus.PENDING),
            )
            await sql.send(
                "UPDATE orders SET status = ?, error = ? WHERE account_id = ? AND status IN (?, ?)",
                (OrderStatus.INVALID, error, account_id, OrderStatus.PENDING, OrderStatus.READY),
            )

        await self._db.write(run)

    async def change_account_key(
        self, account_id: str, jwk: dict[str, object], thumbprint: str, *, old_thumbprint: str
    ) -> KeyChange:
        """The account's key `old_thumbprint` → `jwk` (RFC 8555 §7.3.5): "in use" when
        another account has the new key, "stale" when the account no longer has the old
        key or is no longer valid (a concurrent key change or deactivation won)."""
        params = (codec.dumps(jwk), thumbprint, account_id, AccountStatus.VALID, old_thumbprint)
        try:
            changed = await self._db.write(
                lambda sql: sql.run(
                    "UPDATE accounts SET jwk = ?, thumbprint = ?"
                    " WHERE id = ? AND status = ? AND thumbprint = ?",
                    params,
                )
            )
        except IntegrityError:
            return "in use"
        return "changed" if changed == 1 else "stale"

    # ---- orders and authorizations -------------------------------------------

    async def create_order(self, order: Order, new_authzs: Sequence[Authorization]) -> OrderOutcome:
        """Insert the order with its new authorizations, or nothing:

        - "replaced" when another order that is not invalid already names
          `order.replaces` (RFC 9773 §5: the unique index `ux_orders_replaces_live`
          decides between concurrent ones);
        - "account deactivated" when the account is no longer valid (RFC 8555 §7.3.6;
          its deactivation committed after the request was verified);
        - "authz gone" when an authorization the order reuses (of `order.authz_ids`,
          those not in `new_authzs`) is no longer valid or pending: deactivated or
          failed since `find_reusable_authz` found it.

        One round trip on PostgreSQL, no BEGIN: the locks, the guarded inserts and
        the commit (the Sync) travel together.
        """
        fresh = {a.id for a in new_authzs}
        reused = sorted({a for a in order.authz_ids if a not in fresh})
        params: tuple[Any, ...] = (
            *_order_values(order),
            order.account_id,
            AccountStatus.VALID,
        )
        insert_order = _INSERT_ORDER + _ACCOUNT_VALID
        if reused:
            insert_order += _reused_alive(len(reused))
            params += (*reused, AuthzStatus.VALID, AuthzStatus.PENDING, len(reused))
        if self._postgres and order.replaces is None:
            return await self._create_order_pg(order, new_authzs, reused)
        statements: list[tuple[str, tuple[Any, ...]]] = []
        if self._postgres:
            # Locks first, before the UPDATE of `replaces` below takes any order's.
            statements.append((_LOCK_ACCOUNT_PG, (order.account_id,)))
            if reused:
                statements.append((_lock_authzs_pg(len(reused)), tuple(reused)))
        if order.replaces is not None:
            # An order past its expiry reads as invalid (codec) but its row is still
            # live to the index: made invalid first, it frees the certificate.
            statements.append(
                (
                    _EXPIRE_REPLACING,
                    (
                        OrderStatus.INVALID,
                        _ORDER_EXPIRED,
                        order.replaces,
                        OrderStatus.PENDING,
                        OrderStatus.READY,
                        codec.to_us(order.created_at),
                    ),
                )
            )
        made = len(statements)
        statements.append((insert_order, params))
        statements.extend(_authz_inserts(new_authzs, _ORDER_MADE, (order.id,)))
        statements.extend(
            (_INSERT_ORDER_AUTHZ + _ORDER_MADE, (order.id, a, order.id)) for a in order.authz_ids
        )

        async def run(sql: Sql) -> bool:
            counts = await sql.finish(statements)
            return counts[made] == 1

        try:
            created = await self._db.write(run)
        except IntegrityError:
            # IDs are random: with `replaces` set, the conflict is the index's.
            if order.replaces is None:
                raise
            return "replaced"
        return await self._order_outcome(order, created=created)

    async def _order_outcome(self, order: Order, *, created: bool) -> OrderOutcome:
        if created:
            return "created"
        # Which guard failed (a rare path, so one more read): an account is never valid
        # again once deactivated.
        account = await self.get_account(order.account_id)
        if account is None or account.status != AccountStatus.VALID:
            return "account deactivated"
        return "authz gone"

    async def _create_order_pg(
        self, order: Order, new_authzs: Sequence[Authorization], reused: list[str]
    ) -> OrderOutcome:
        params: list[Any] = [order.account_id, AccountStatus.VALID]
        if reused:
            params += [*reused, AuthzStatus.VALID, AuthzStatus.PENDING]
        params += _order_values(order)
        if reused:
            params.append(len(reused))
        for a in new_authzs:
            params += _authz_values(a)
        params += [v for a in new_authzs for c in a.challenges for v in _challenge_values(a, c)]
        params += list(order.authz_ids)
        text = _create_order_pg(new_authzs, len(reused), len(order.authz_ids))
        created = await self._db.write_one(text, params) == 1
        return await self._order_outcome(order, created=created)

    async def start_challenge(
        self, authz_id: str, challenge_id: str, *, lease_until: dt.datetime
    ) -> bool:
        """pending → processing and enqueue the validation job, atomically; False if not pending."""
        params = (
            ChallengeStatus.PROCESSING,
            challenge_id,
            authz_id,
            ChallengeStatus.PENDING,
            authz_id,
            AuthzStatus.PENDING,
            codec.to_us(self._clock.now()),
            authz_id,
            ChallengeStatus.PENDING,
        )
        lease = codec.to_us(lease_until)
        if self._postgres:

            async def run_pg(sql: Sql) -> bool:
                # One round trip, no BEGIN: the lock and the start commit at the Sync.
                _, started = await sql.finish(
                    [(_LOCK_AUTHZ_PG, (authz_id,)), (_START_CHALLENGE_PG, (*params, lease))]
                )
                return started == 1

            return await self._db.write(run_pg, durable=False)

        async def run(sql: Sql) -> bool:
            if await sql.run(_START_CHALLENGE, params) != 1:
                return False
            await sql.send(_INSERT_JOB, ("validate", challenge_id, lease))
            return True

        # Transient: a power cut may take `processing` back to `pending` (the client
        # answers the challenge again); the validation's result is committed durably.
        return await self._db.write(run, durable=False)

    async def finish_validation(
        self,
        authz_id: str,
        challenge_id: str,
        *,
        error: AcmeError | None,
        records: Sequence[dict[str, object]],
        now: dt.datetime,
        valid_until: dt.datetime,
    ) -> bool:
        """Record a validation result and move the authz and its orders (RFC 8555 §7.1.6);
        False if another worker had recorded one already."""
        valid = error is None
        challenge_params = (
            ChallengeStatus.VALID if valid else ChallengeStatus.INVALID,
            codec.to_us(now) if valid else None,
            codec.error_to_json(error),
            codec.dumps(list(records)),
            challenge_id,
            ChallengeStatus.PROCESSING,
        )
        now_us = codec.to_us(self._clock.now())

        async def run(sql: Sql) -> bool:
            changed = await sql.run(
                "UPDATE challenges SET status = ?, validated = ?, error = ?, validation_record = ?"
                " WHERE id = ? AND status = ?",
                challenge_params,
            )
            await sql.send(
                "DELETE FROM jobs WHERE kind = 'validate' AND target_id = ?", (challenge_id,)
            )
            if changed != 1:
                return False  # already finished by another worker
            authz: tuple[str, tuple[Any, ...]]
            if valid:
                authz = (
                    "UPDATE authzs SET status = ?, expires = ? WHERE id = ? AND status = ?",
                    (AuthzStatus.VALID, codec.to_us(valid_until), authz_id, AuthzStatus.PENDING),
                )
            else:
                authz = (
                    "UPDATE authzs SET status = ? WHERE id = ? AND status = ?",
                    (AuthzStatus.INVALID, authz_id, AuthzStatus.PENDING),
                )
            await sql.finish([authz, *self._settle_orders(authz_id, error, now_us)])
            return True

        return await self._db.write(run)

    def _settle_orders(
        self, authz_id: str, error: AcmeError | None, now: int
    ) -> list[tuple[str, tuple[Any, ...]]]:
        """The statements that move pending orders using `authz_id` to ready or invalid."""
        settle = (
            (
                _READY_ORDERS_OF_AUTHZ,
                (OrderStatus.READY, authz_id, OrderStatus.PENDING, AuthzStatus.VALID, now),
            )
            if error is None
            else (
                _INVALID_ORDERS_OF_AUTHZ,
                (OrderStatus.INVALID, codec.error_to_json(error), authz_id, OrderStatus.PENDING),
            )
        )
        if not self._for_update:
            return [settle]
        # PostgreSQL: the orders are locked first, so a validation of an order's other
        # authz finishing at the same time waits, and its UPDATE (a new snapshot in READ
        # COMMITTED) sees this one's authz valid: they cannot both miss "all valid".
        return [(_LOCK_ORDERS_OF_AUTHZ_PG, (authz_id, OrderStatus.PENDING)), settle]

    async def settle_order(self, order_id: str) -> None:
        """Move a pending order whose authzs are all valid to ready (e.g. all reused)."""
        now = codec.to_us(self._clock.now())
        await self._db.write_one(
            _READY_ORDER,
            (OrderStatus.READY, order_id, OrderStatus.PENDING, AuthzStatus.VALID, now),
        )

    async def deactivate_authz(self, authz_id: str) -> bool:
        """RFC 8555 §7.5.2: pending or valid → deactivated; its pending orders become invalid."""
        error = codec.error_to_json(
            AcmeError(
                type=ProblemType.UNAUTHORIZED,
                detail="An authorization of this order was deactivated",
            )
        )

        async def run(sql: Sql) -> bool:
            changed = await sql.run(
                "UPDATE authzs SET status = ? WHERE id = ? AND status IN (?, ?)",
                (AuthzStatus.DEACTIVATED, authz_id, AuthzStatus.PENDING, AuthzStatus.VALID),
            )
            if changed != 1:
                return False
            await sql.send(
                "UPDATE orders SET status = ?, error = ? WHERE id IN"
                " (SELECT order_id FROM order_authzs WHERE authz_id = ?)"
                " AND status || '' IN (?, ?)",  # not by ix_orders_status (_ORDERS_OF_AUTHZ)
                (OrderStatus.INVALID, error, authz_id, OrderStatus.PENDING, OrderStatus.READY),
            )
            return True

        return await self._db.write(run)

    async def begin_finalize(
        self, order_id: str, *, csr_der: bytes, serial: str, lease_until: dt.datetime
    ) -> bool:
        """ready → processing with the CSR and serial recorded and an issuance job queued."""
        now = codec.to_us(self._clock.now())
        params = (OrderStatus.PROCESSING, csr_der, serial, order_id, OrderStatus.READY, now)
        lease = codec.to_us(lease_until)
        if self._postgres:
            return await self._db.write_one(_BEGIN_FINALIZE_PG, (*params, lease)) == 1

        async def run(sql: Sql) -> bool:
            if await sql.run(_BEGIN_FINALIZE, params) != 1:
                return False
            await sql.send(_INSERT_JOB, ("issue", order_id, lease))
            return True

        # Transient: a power cut may take `processing` back to `ready` (the client
        # finalizes again, a new serial is chosen); no certificate leaves the CA before
        # `finish_issuance` has committed it durably.
        return await self._db.write(run, durable=False)

    async def get_order_serial(self, order_id: str) -> str | None:
        row = await self._db.read(_one, "SELECT serial FROM orders WHERE id = ?", (order_id,))
        return row["serial"] if row is not None else None

    async def finish_issuance(
        self,
        order_id: str,
        certificate: Certificate,
        *,
        counters: Sequence[tuple[str, str, int]] = (),
    ) -> bool:
        """Store the certificate and make the order valid; False if another worker did.

        `counters` (limit name, key, bucket) are rate-limit counters bumped in the
        same transaction.
        """
        cert_params = (
            certificate.id,
            certificate.serial,
            certificate.account_id,
            certificate.order_id,
            codec.identifiers_to_json(certificate.identifiers),
            codec.dumps(list(certificate.pem_chains)),
            certificate.spki_sha256,
            codec.to_us(certificate.not_before),
            codec.to_us(certificate.not_after),
            codec.to_us(certificate.issued_at),
        )

        issued = (order_id, certificate.id)
        if self._postgres:
            merged: dict[tuple[str, str, int], int] = {}
            for c in counters:
                merged[c] = merged.get(c, 0) + 1
            params = (
                OrderStatus.VALID,
                certificate.id,
                order_id,
                OrderStatus.PROCESSING,
                *cert_params,
                order_id,
                *(v for (name, key, bucket), n in merged.items() for v in (name, key, bucket, n)),
            )
            try:
                return await self._db.write_one(_finish_issuance_pg(len(merged)), params) == 1
            except IntegrityError:
                return False

        async def run(sql: Sql) -> bool:
            changed, *_ = await sql.finish(
                [
                    (
                        "UPDATE orders SET status = ?, certificate_id = ?"
                        " WHERE id = ? AND status = ?",
                        (OrderStatus.VALID, certificate.id, order_id, OrderStatus.PROCESSING),
                    ),
                    (_INSERT_CERTIFICATE_IF_ISSUED, (*cert_params, *issued)),
                    (_DELETE_ISSUE_JOB_IF_ISSUED, (order_id, *issued)),
                    *((_UPSERT_COUNTER_IF_ISSUED, (*c, *issued)) for c in counters),
                ]
            )
            return bool(changed == 1)

        try:
            return await self._db.write(run)
        except IntegrityError:
            return False

    async def fail_order(self, order_id: str, error: AcmeError) -> None:
        params = (OrderStatus.INVALID, codec.error_to_json(error), order_id, OrderStatus.PROCESSING)

        async def run(sql: Sql) -> None:
            await sql.send(
                "UPDATE orders SET status = ?, error = ? WHERE id = ? AND status = ?", params
            )
            await sql.send("DELETE FROM jobs WHERE kind = 'issue' AND target_id = ?", (order_id,))

        await self._db.write(run)

    # ---- revocation ----------------------------------------------------------

    async def revoke_certificate(
        self, cert_id: str, reason: RevocationReason, now: dt.datetime
    ) -> bool:
        """False if it was already revoked."""
        params = (codec.to_us(now), int(reason), cert_id)
        changed = await self._db.write(
            lambda sql: sql.run(
                "UPDATE certificates SET revoked_at = ?, revocation_reason = ?"
                " WHERE id = ? AND revoked_at IS NULL",
                params,
            )
        )
        return bool(changed == 1)

    # ---- nonces --------------------------------------------------------------

    async def load_nonce_scope(self) -> bytes:
        """What the nonce MAC key is bound to besides the stored key: on SQLite the boot
        (`nonce_log`), on PostgreSQL the server's start (read now; a redemption refused
        for a later start raises `NonceScopeChanged`)."""
        if self._db.nonce_log is not None:
            return b"sqlite-boot:" + boot_id()
        row = await self._db.read(_one, "SELECT " + _PG_START + " AS started", ())
        assert row is not None
        self._pg_started = int(row["started"])
        return b"postgresql-start:%d" % self._pg_started

    @property
    def nonce_scope_can_change(self) -> bool:
        """Whether the scope may change under a running process (PostgreSQL's restart;
        a machine's boot cannot)."""
        return self._db.nonce_log is None

    async def _pg_scope(self) -> int:
        if self._pg_started is None:
            await self.load_nonce_scope()
        assert self._pg_started is not None
        return self._pg_started

    async def _check_pg_scope(self) -> None:
        """After a refused redemption: raise if the server has restarted since."""
        started = self._pg_started
        await self.load_nonce_scope()
        if self._pg_started != started:
            raise NonceScopeChanged()

    async def redeem_nonce(self, value: str, expires: dt.datetime) -> bool:
        """Record a nonce as used; False if it was used before (RFC 8555 §6.5)."""
        if self._db.nonce_log is not None:
            return self._db.nonce_log.redeem(value, codec.to_us(expires))
        try:
            inserted = await self._db.write_one(
                _REDEEM_PG, (value, codec.to_us(expires), await self._pg_scope())
            )
        except IntegrityError:
            return False
        if inserted != 1:
            # The start is the statement's only guard: the server has restarted.
            await self.load_nonce_scope()
            raise NonceScopeChanged()
        return True

    @property
    def checks_accounts_at_redemption(self) -> bool:
        """Whether `redeem_nonce_for_account` checks the account in the same statement
        (PostgreSQL: one round trip for both; SQLite keeps nonces in a side file)."""
        return self._db.nonce_log is None

    async def redeem_nonce_for_account(
        self, value: str, expires: dt.datetime, *, account_id: str, thumbprint: str
    ) -> bool | None:
        """Redeem the nonce if the account is still valid with this key: True; False if
        the nonce was used before; None (nothing redeemed) if the account changed."""
        if self._db.nonce_log is not None:
            account = await self.get_account(account_id)
            if account is None or account.status != AccountStatus.VALID:
                return None
            if account.thumbprint != thumbprint:
                return None
            return await self.redeem_nonce(value, expires)
        params = (value, codec.to_us(expires), await self._pg_scope())
        try:
            inserted = await self._db.write_one(
                _REDEEM_FOR_ACCOUNT_PG, (*params, account_id, AccountStatus.VALID, thumbprint)
            )
        except IntegrityError:
            return False
        if inserted == 1:
            return True
        await self._check_pg_scope()  # raises if it was the server's restart
        return None

    async def purge_used_nonces(self, now: dt.datetime) -> int:
        cutoff = codec.to_us(now)
        if self._db.nonce_log is not None:
            return self._db.nonce_log.purge(cutoff)
        return await self._db.write(
            lambda sql: sql.run("DELETE FROM used_nonces WHERE expires < ?", (cutoff,))
        )

    # ---- jobs ----------------------------------------------------------------

    async def claim_stale_jobs(
        self, *, now: dt.datetime, lease_until: dt.datetime, limit: int = 16
    ) -> list[tuple[str, str]]:
        """Jobs whose lease ran out (their process died), re-leased to the caller."""
        now_us, lease_us = codec.to_us(now), codec.to_us(lease_until)

        async def run(sql: Sql) -> list[tuple[str, str]]:
            claimed: list[tuple[str, str]] = []
            rows = await sql.all(
                _STALE_JOBS_PG if self._for_update else _STALE_JOBS, (now_us, limit)
            )
            for row in rows:
                changed = await sql.run(
                    "UPDATE jobs SET lease_until = ?, attempts = attempts + 1"
                    " WHERE kind = ? AND target_id = ? AND lease_until = ?",
                    (lease_us, row["kind"], row["target_id"], row["lease_until"]),
                )
                if changed == 1:
                    claimed.append((row["kind"], row["target_id"]))
            return claimed

        return await self._db.write(run)

    # ---- settings --------------------------------------------------------------

    async def get_or_create_setting(self, name: str, default: str) -> str:
        """The stored value, or `default` stored first by whichever process gets there first."""
        select_value = "SELECT value FROM settings WHERE name = ?"
        row = await self._db.read(_one, select_value, (name,))
        if row is not None:
            return str(row["value"])
        with contextlib.suppress(*IntegrityError):
            await self._db.write(
                lambda sql: sql.send(
                    "INSERT INTO settings (name, value) VALUES (?, ?)", (name, default)
                )
            )
        row = await self._db.read(_one, select_value, (name,))
        assert row is not None
        return str(row["value"])

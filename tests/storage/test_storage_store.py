"""The guarded transitions of `Storage`, raced between two "processes"; and the
queries whose answer depends on the store's clock (the orders list).

Each process is a `Storage` with engines of its own on one database, so the two
meet only in the database: SQLite's file lock, or PostgreSQL's row locks. Each
race runs many times at once, so that a missing guard shows as a double win.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import psycopg
import pytest
from sqlalchemy import func, select

from acme_ca.clock import FakeClock
from acme_ca.errors import AcmeError, Identifier, ProblemType
from acme_ca.model import (
    Account,
    AccountStatus,
    Authorization,
    AuthzStatus,
    Challenge,
    ChallengeStatus,
    ChallengeType,
    Order,
    OrderStatus,
)
from acme_ca.storage.engine import Engines, create_engines
from acme_ca.storage.migrate import upgrade
from acme_ca.storage.policy import PolicyStore
from acme_ca.storage.schema import authzs as authzs_table
from acme_ca.storage.schema import jobs, orders
from acme_ca.storage.store import NonceScopeChanged, Storage

ROUNDS = 12
SECOND = dt.timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Pair:
    a: Storage
    b: Storage
    clock: FakeClock


@pytest.fixture
async def pair(empty_database_url: str) -> AsyncIterator[Pair]:
    clock = FakeClock()
    engines: list[Engines] = [create_engines(empty_database_url, pool_size=4) for _ in range(2)]
    try:
        await upgrade(engines[0])
        yield Pair(Storage(engines[0], clock), Storage(engines[1], clock), clock)
    finally:
        for e in engines:
            await e.dispose()


def _id() -> str:
    return secrets.token_urlsafe(12)


async def _account(store: Storage, now: dt.datetime) -> Account:
    return await store.create_account(
        Account(
            id=_id(),
            status=AccountStatus.VALID,
            jwk={"kty": "OKP", "crv": "Ed25519", "x": _id()},
            thumbprint=_id(),
            created_at=now,
        )
    )


_TWO_KINDS = (ChallengeType.HTTP_01, ChallengeType.DNS_01)


def _plan(
    account: Account,
    now: dt.datetime,
    *,
    names: int,
    status: OrderStatus,
    kinds: Sequence[ChallengeType] = (ChallengeType.HTTP_01,),
) -> tuple[Order, list[Authorization]]:
    """An order with one new authz (and one challenge of each of `kinds`) per name."""
    expires = now + dt.timedelta(days=7)
    authz_status = AuthzStatus.VALID if status == OrderStatus.READY else AuthzStatus.PENDING
    new_authzs = []
    for n in range(names):
        authz_id = _id()
        new_authzs.append(
            Authorization(
                id=authz_id,
                account_id=account.id,
                identifier=Identifier(type="dns", value=f"n{n}.{authz_id.lower()}.test"),
                status=authz_status,
                expires=expires,
                challenges=tuple(
                    Challenge(
                        id=_id(),
                        authz_id=authz_id,
                        type=kind,
                        token=secrets.token_urlsafe(32),
                        status=ChallengeStatus.PENDING,
                    )
                    for kind in kinds
                ),
                created_at=now,
            )
        )
    order = Order(
        id=_id(),
        account_id=account.id,
        status=status,
        identifiers=tuple(a.identifier for a in new_authzs),
        authz_ids=tuple(a.id for a in new_authzs),
        expires=expires,
        created_at=now,
    )
    return order, new_authzs


async def _order(
    store: Storage,
    account: Account,
    now: dt.datetime,
    *,
    names: int,
    status: OrderStatus,
    kinds: Sequence[ChallengeType] = (ChallengeType.HTTP_01,),
) -> tuple[Order, list[Authorization]]:
    """`_plan`, stored."""
    order, new_authzs = _plan(account, now, names=names, status=status, kinds=kinds)
    assert await store.create_order(order, new_authzs) == "created"
    return order, new_authzs


async def _job_count(store: Storage) -> int:
    async with store.engines.reader.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(jobs))).scalar_one())


async def _finish(
    store: Storage, authz: Authorization, now: dt.datetime, error: AcmeError | None = None
) -> None:
    await store.finish_validation(
        authz.id,
        authz.challenges[0].id,
        error=error,
        records=[{"hostname": authz.identifier.value}],
        now=now,
        valid_until=now + dt.timedelta(days=30),
    )


async def _processing(
    pair: Pair, *, names: int, lease: dt.timedelta = dt.timedelta(minutes=1)
) -> list[tuple[Order, list[Authorization]]]:
    """ROUNDS pending orders whose challenges are all processing (validation jobs queued)."""
    now = pair.clock.now()
    account = await _account(pair.a, now)
    made = [
        await _order(pair.a, account, now, names=names, status=OrderStatus.PENDING)
        for _ in range(ROUNDS)
    ]
    for _, authzs in made:
        for authz in authzs:
            started = await pair.a.start_challenge(
                authz.id, authz.challenges[0].id, lease_until=now + lease
            )
            assert started
    return made


async def test_concurrent_finalize_has_one_winner(pair: Pair) -> None:
    now = pair.clock.now()
    account = await _account(pair.a, now)
    orders = [
        (await _order(pair.a, account, now, names=1, status=OrderStatus.READY))[0]
        for _ in range(ROUNDS)
    ]

    async def race(order: Order) -> list[bool]:
        return list(
            await asyncio.gather(
                *(
                    store.begin_finalize(
                        order.id, csr_der=b"csr", serial=secrets.token_hex(16), lease_until=now
                    )
                    for store in (pair.a, pair.b)
                )
            )
        )

    results = await asyncio.gather(*(race(o) for o in orders))
    assert all(sorted(r) == [False, True] for r in results), results
    assert await _job_count(pair.a) == ROUNDS  # one issuance job per order, not two
    for order in orders:
        stored = await pair.b.get_order(order.id)
        assert stored is not None
        assert stored.status == OrderStatus.PROCESSING


def _replacing(
    account: Account, cert_id: str, now: dt.datetime, lifetime: dt.timedelta = dt.timedelta(days=7)
) -> Order:
    """An order (without authorizations) that names `cert_id` in `replaces`."""
    return Order(
        id=_id(),
        account_id=account.id,
        status=OrderStatus.PENDING,
        identifiers=(Identifier(type="dns", value="replaced.test"),),
        authz_ids=(),
        expires=now + lifetime,
        replaces=cert_id,
        created_at=now,
    )


async def test_concurrent_replacements_of_one_certificate_have_one_winner(pair: Pair) -> None:
    """RFC 9773 §5: the insert itself refuses a second live order naming the certificate."""
    now = pair.clock.now()
    account = await _account(pair.a, now)
    cert_ids = [f"aki.{_id()}" for _ in range(ROUNDS)]

    async def race(cert_id: str) -> Sequence[str]:
        return await asyncio.gather(
            *(s.create_order(_replacing(account, cert_id, now), []) for s in (pair.a, pair.b))
        )

    results = await asyncio.gather(*(race(c) for c in cert_ids))
    assert all(sorted(r) == ["created", "replaced"] for r in results), results
    # The loser left nothing: one order per certificate.
    async with pair.a.engines.reader.connect() as conn:
        count = select(func.count()).select_from(orders).where(orders.c.replaces.in_(cert_ids))
        assert (await conn.execute(count)).scalar_one() == ROUNDS


async def test_an_invalid_or_expired_replacing_order_frees_the_certificate(pair: Pair) -> None:
    now = pair.clock.now()
    account = await _account(pair.a, now)
    cert_id = f"aki.{_id()}"
    first, authzs = await _order(pair.a, account, now, names=1, status=OrderStatus.PENDING)
    replacing = dataclasses.replace(_replacing(account, cert_id, now), authz_ids=first.authz_ids)
    assert await pair.a.create_order(replacing, []) == "created"
    assert await pair.b.create_order(_replacing(account, cert_id, now), []) == "replaced"
    # Invalid (its authorization deactivated): the certificate is free again.
    assert await pair.a.deactivate_authz(authzs[0].id)
    short = _replacing(account, cert_id, now, lifetime=SECOND)
    assert await pair.b.create_order(short, []) == "created"
    assert await pair.a.create_order(_replacing(account, cert_id, now), []) == "replaced"
    # Expired (it reads invalid, its row still says pending): free again as well.
    later = now + 2 * SECOND
    pair.clock.set(later)
    assert await pair.a.create_order(_replacing(account, cert_id, later), []) == "created"
    expired = await pair.b.get_order(short.id)
    assert expired is not None
    assert expired.status == OrderStatus.INVALID
    assert expired.error is not None
    assert expired.error.detail == "Order expired"


async def _rows_of(store: Storage, account: Account) -> tuple[int, list[str]]:
    """(the account's orders, the statuses of its authzs)."""
    async with store.engines.reader.connect() as conn:
        count = select(func.count()).select_from(orders).where(orders.c.account_id == account.id)
        made = (await conn.execute(count)).scalar_one()
        statuses = select(authzs_table.c.status).where(authzs_table.c.account_id == account.id)
        return int(made), sorted((await conn.execute(statuses)).scalars())


@asynccontextmanager
async def _held_open(url: str, *statements: tuple[str, tuple[str, ...]]) -> AsyncIterator[None]:
    """PostgreSQL: `statements` run in a transaction that commits when the block ends,
    as a concurrent unit of work does between its statements and its COMMIT."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for text, params in statements:
            await conn.execute(text.encode(), params)
        yield
        await conn.commit()


def _postgres_only(url: str) -> None:
    if not url.startswith("postgresql"):
        pytest.skip("SQLite runs one write at a time: the test before is its race")


async def test_no_order_is_made_for_an_account_deactivated_since_it_was_read(
    pair: Pair,
) -> None:
    """RFC 8555 §7.3.6: a newOrder verified before its account's deactivation committed
    writes nothing after it (no order, no pending authorizations)."""
    now = pair.clock.now()
    accounts = [await _account(pair.a, now) for _ in range(ROUNDS)]
    planned = [_plan(account, now, names=2, status=OrderStatus.PENDING) for account in accounts]
    await asyncio.gather(*(pair.b.deactivate_account(account.id) for account in accounts))
    outcomes = await asyncio.gather(*(pair.a.create_order(o, new) for o, new in planned))
    assert outcomes == ["account deactivated"] * ROUNDS
    for account in accounts:
        assert await _rows_of(pair.a, account) == (0, [])


async def test_concurrent_order_and_account_deactivation_leave_no_pending_authz(
    pair: Pair,
) -> None:
    now = pair.clock.now()
    accounts = [await _account(pair.a, now) for _ in range(ROUNDS)]

    async def race(account: Account) -> str:
        order, new = _plan(account, now, names=2, status=OrderStatus.PENDING)
        made, _ = await asyncio.gather(
            pair.a.create_order(order, new), pair.b.deactivate_account(account.id)
        )
        return made

    outcomes = await asyncio.gather(*(race(a) for a in accounts))
    assert set(outcomes) <= {"created", "account deactivated"}, outcomes
    for account, outcome in zip(accounts, outcomes, strict=True):
        made = 1 if outcome == "created" else 0
        assert await _rows_of(pair.a, account) == (made, ["deactivated"] * 2 * made)


async def test_an_order_waits_for_a_deactivation_of_its_account_in_flight(
    pair: Pair, empty_database_url: str
) -> None:
    """PostgreSQL: the deactivation has run, not committed; the order's insert, once the
    deactivation commits, must see it (READ COMMITTED alone would not)."""
    _postgres_only(empty_database_url)
    now = pair.clock.now()
    account = await _account(pair.a, now)
    order, new = _plan(account, now, names=2, status=OrderStatus.PENDING)
    async with _held_open(
        empty_database_url,
        ("UPDATE accounts SET status = 'deactivated' WHERE id = %s", (account.id,)),
        ("UPDATE authzs SET status = 'deactivated' WHERE account_id = %s", (account.id,)),
    ):
        made = asyncio.create_task(pair.a.create_order(order, new))
        await asyncio.sleep(0.3)
    assert await made == "account deactivated"
    assert await _rows_of(pair.a, account) == (0, [])


async def test_a_preauthorization_waits_for_a_deactivation_of_its_account_in_flight(
    pair: Pair, empty_database_url: str
) -> None:
    """The same for newAuthz (RFC 8555 §7.4.1), on SQLite one write after the other."""
    now = pair.clock.now()
    account = await _account(pair.a, now)
    policy = PolicyStore(pair.a.engines, pair.clock)
    _, (authz,) = _plan(account, now, names=1, status=OrderStatus.PENDING)
    if not empty_database_url.startswith("postgresql"):
        await pair.b.deactivate_account(account.id)
        assert not await policy.create_authz(authz)
        assert await _rows_of(pair.a, account) == (0, [])
        return
    async with _held_open(
        empty_database_url,
        ("UPDATE accounts SET status = 'deactivated' WHERE id = %s", (account.id,)),
        ("UPDATE authzs SET status = 'deactivated' WHERE account_id = %s", (account.id,)),
    ):
        made = asyncio.create_task(policy.create_authz(authz))
        await asyncio.sleep(0.3)
    assert not await made
    assert await _rows_of(pair.a, account) == (0, [])


async def _reusing(
    pair: Pair, account: Account, reused: Authorization
) -> tuple[Order, list[Authorization]]:
    """An order for two names: `reused`'s and a new one."""
    now = pair.clock.now()
    order, new = _plan(account, now, names=1, status=OrderStatus.PENDING)
    return (
        dataclasses.replace(
            order,
            identifiers=(reused.identifier, *order.identifiers),
            authz_ids=(reused.id, *order.authz_ids),
        ),
        new,
    )


@pytest.mark.parametrize("change", ["deactivated", "failed"])
async def test_an_order_does_not_reuse_an_authz_that_changed_since_it_was_found(
    pair: Pair, change: str
) -> None:
    """A reused authorization deactivated (or failed) after `find_reusable_authz` found
    it: the order is not made (the RA makes it again with new authorizations)."""
    now = pair.clock.now()
    account = await _account(pair.a, now)
    _, (authz,) = await _order(pair.a, account, now, names=1, status=OrderStatus.PENDING)
    found = await pair.a.find_reusable_authz(
        account.id, authz.identifier, wildcard=False, valid_after=now
    )
    assert found is not None
    assert found.id == authz.id
    order, new = await _reusing(pair, account, found)
    if change == "deactivated":
        assert await pair.b.deactivate_authz(authz.id)
    else:
        assert await pair.b.start_challenge(authz.id, authz.challenges[0].id, lease_until=now)
        await _finish(pair.b, authz, now, AcmeError(type=ProblemType.UNAUTHORIZED, detail="no"))
    assert await pair.a.create_order(order, new) == "authz gone"
    assert await pair.a.get_order(order.id) is None
    assert await pair.a.get_authz(new[0].id) is None
    assert await _rows_of(pair.a, account) == (1, [change.replace("failed", "invalid")])


async def test_an_order_reuses_an_authz_that_became_valid_since_it_was_found(pair: Pair) -> None:
    now = pair.clock.now()
    account = await _account(pair.a, now)
    _, (authz,) = await _order(pair.a, account, now, names=1, status=OrderStatus.PENDING)
    order, new = await _reusing(pair, account, authz)
    assert await pair.b.start_challenge(authz.id, authz.challenges[0].id, lease_until=now)
    await _finish(pair.b, authz, now)
    assert await pair.a.create_order(order, new) == "created"
    stored = await pair.a.get_order(order.id)
    assert stored is not None
    assert stored.status == OrderStatus.PENDING
    assert stored.authz_ids == order.authz_ids


async def test_an_order_waits_for_a_deactivation_of_its_reused_authz_in_flight(
    pair: Pair, empty_database_url: str
) -> None:
    """PostgreSQL: `deactivate_authz` has moved the authz and its orders, not committed."""
    _postgres_only(empty_database_url)
    now = pair.clock.now()
    account = await _account(pair.a, now)
    _, (authz,) = await _order(pair.a, account, now, names=1, status=OrderStatus.PENDING)
    order, new = await _reusing(pair, account, authz)
    async with _held_open(
        empty_database_url,
        ("UPDATE authzs SET status = 'deactivated' WHERE id = %s", (authz.id,)),
        (
            "UPDATE orders SET status = 'invalid' WHERE id IN"
            " (SELECT order_id FROM order_authzs WHERE authz_id = %s)",
            (authz.id,),
        ),
    ):
        made = asyncio.create_task(pair.a.create_order(order, new))
        await asyncio.sleep(0.3)
    assert await made == "authz gone"
    assert await pair.a.get_order(order.id) is None
    assert await _rows_of(pair.a, account) == (1, ["deactivated"])


async def test_finalize_of_an_order_not_ready_fails(pair: Pair) -> None:
    now = pair.clock.now()
    account = await _account(pair.a, now)
    order, _ = await _order(pair.a, account, now, names=1, status=OrderStatus.PENDING)
    assert not await pair.b.begin_finalize(order.id, csr_der=b"c", serial="1", lease_until=now)
    assert await _job_count(pair.a) == 0


async def test_concurrent_starts_of_two_challenges_of_one_authz_have_one_winner(
    pair: Pair,
) -> None:
    # RFC 8555 §7.1.6: one attempt per authorization. On PostgreSQL the two UPDATEs
    # touch different challenge rows, so each one's NOT EXISTS saw the other's row
    # still pending (READ COMMITTED): both started, and a client got two attempts.
    now = pair.clock.now()
    account = await _account(pair.a, now)
    authzs = []
    for _ in range(ROUNDS):
        _, (authz,) = await _order(
            pair.a, account, now, names=1, status=OrderStatus.PENDING, kinds=_TWO_KINDS
        )
        authzs.append(authz)

    async def race(authz: Authorization) -> list[bool]:
        lease = now + dt.timedelta(minutes=1)
        return list(
            await asyncio.gather(
                *(
                    store.start_challenge(authz.id, challenge.id, lease_until=lease)
                    for store, challenge in zip((pair.a, pair.b), authz.challenges, strict=True)
                )
            )
        )

    results = await asyncio.gather(*(race(a) for a in authzs))
    assert all(sorted(r) == [False, True] for r in results), results
    assert await _job_count(pair.a) == ROUNDS
    # Not a lock that refuses every start: a lone start of a fresh authz still wins.
    _, (fresh,) = await _order(pair.b, account, now, names=1, status=OrderStatus.PENDING)
    assert await pair.b.start_challenge(fresh.id, fresh.challenges[0].id, lease_until=now)


async def test_concurrent_key_changes_of_one_account_have_one_winner(pair: Pair) -> None:
    now = pair.clock.now()
    accounts = [await _account(pair.a, now) for _ in range(ROUNDS)]

    async def race(account: Account) -> list[str]:
        return list(
            await asyncio.gather(
                *(
                    store.change_account_key(
                        account.id, {"kty": "OKP", "x": key}, key, old_thumbprint=account.thumbprint
                    )
                    for store, key in ((pair.a, _id()), (pair.b, _id()))
                )
            )
        )

    results = await asyncio.gather(*(race(a) for a in accounts))
    assert all(sorted(r) == ["changed", "stale"] for r in results), results
    # The guard is the old key: a change from a key the account no longer has is stale,
    # from its current key it is made, and to a key another account holds it is not.
    account, other = accounts[0], accounts[1]
    stored = await pair.b.get_account(account.id)
    assert stored is not None
    assert stored.thumbprint != account.thumbprint
    new = _id()
    assert (
        await pair.a.change_account_key(account.id, {}, new, old_thumbprint=account.thumbprint)
        == "stale"
    )
    current = await pair.a.get_account(other.id)
    assert current is not None
    assert (
        await pair.a.change_account_key(
            account.id, {}, current.thumbprint, old_thumbprint=stored.thumbprint
        )
        == "in use"
    )
    assert (
        await pair.a.change_account_key(account.id, {}, new, old_thumbprint=stored.thumbprint)
        == "changed"
    )


async def test_concurrent_validations_of_one_order_make_it_ready(pair: Pair) -> None:
    made = await _processing(pair, names=2)
    now = pair.clock.now()
    await asyncio.gather(
        *(
            _finish(store, authz, now)
            for _, authzs in made
            for store, authz in zip((pair.a, pair.b), authzs, strict=True)
        )
    )
    for order, _ in made:
        stored = await pair.a.get_order(order.id)
        assert stored is not None
        assert stored.status == OrderStatus.READY
    assert await _job_count(pair.a) == 0


async def test_one_failed_validation_makes_the_order_invalid(pair: Pair) -> None:
    made = await _processing(pair, names=2)
    now = pair.clock.now()
    error = AcmeError(type=ProblemType.UNAUTHORIZED, detail="wrong key authorization")
    await asyncio.gather(
        *(
            coro
            for _, authzs in made
            for coro in (_finish(pair.a, authzs[0], now), _finish(pair.b, authzs[1], now, error))
        )
    )
    for order, _ in made:
        stored = await pair.a.get_order(order.id)
        assert stored is not None
        assert stored.status == OrderStatus.INVALID
        assert stored.error is not None
        assert stored.error.type == ProblemType.UNAUTHORIZED


async def test_a_validation_result_is_recorded_once(pair: Pair) -> None:
    """Two workers finishing one challenge (a resumed job): the first result stands."""
    made = await _processing(pair, names=1)
    now = pair.clock.now()
    error = AcmeError(type=ProblemType.CONNECTION, detail="refused")
    await asyncio.gather(
        *(
            coro
            for _, (authz,) in made
            for coro in (_finish(pair.a, authz, now), _finish(pair.b, authz, now, error))
        )
    )
    for order, (authz,) in made:
        stored_authz = await pair.a.get_authz(authz.id)
        stored_order = await pair.a.get_order(order.id)
        assert stored_authz is not None
        assert stored_order is not None
        challenge = stored_authz.challenges[0]
        # Whichever won, challenge, authz and order agree.
        if challenge.status == ChallengeStatus.VALID:
            assert (stored_authz.status, stored_order.status) == (
                AuthzStatus.VALID,
                OrderStatus.READY,
            )
        else:
            assert (stored_authz.status, stored_order.status) == (
                AuthzStatus.INVALID,
                OrderStatus.INVALID,
            )


async def _claim_all(store: Storage, now: dt.datetime) -> list[tuple[str, str]]:
    return await store.claim_stale_jobs(now=now, lease_until=now + dt.timedelta(minutes=1))


async def test_a_stale_job_goes_to_exactly_one_claimer(pair: Pair) -> None:
    made = await _processing(pair, names=1, lease=SECOND)
    pair.clock.advance(2 * SECOND)
    now = pair.clock.now()
    got_a, got_b = await asyncio.gather(_claim_all(pair.a, now), _claim_all(pair.b, now))
    assert not set(got_a) & set(got_b)
    targets = {authzs[0].challenges[0].id for _, authzs in made}
    assert set(got_a) | set(got_b) == {("validate", t) for t in targets}
    assert len(got_a) + len(got_b) == ROUNDS
    # Re-leased: nobody may take them again until the new lease runs out.
    assert await _claim_all(pair.a, now) == []
    assert await _claim_all(pair.b, now + dt.timedelta(seconds=59)) == []
    assert len(await _claim_all(pair.b, now + dt.timedelta(seconds=61))) == ROUNDS


async def test_a_job_within_its_lease_is_not_claimed(pair: Pair) -> None:
    await _processing(pair, names=1, lease=dt.timedelta(minutes=1))
    assert await _claim_all(pair.b, pair.clock.now() + dt.timedelta(seconds=59)) == []


async def test_a_nonce_is_redeemed_once_across_processes(pair: Pair) -> None:
    expires = pair.clock.now() + dt.timedelta(hours=1)
    values = [secrets.token_urlsafe(24) for _ in range(ROUNDS)]

    async def race(value: str) -> Sequence[bool]:
        return await asyncio.gather(*(s.redeem_nonce(value, expires) for s in (pair.a, pair.b)))

    results = await asyncio.gather(*(race(v) for v in values))
    assert all(sorted(r) == [False, True] for r in results), results
    assert not await pair.a.redeem_nonce(values[0], expires)
    assert not await pair.b.redeem_nonce(values[0], expires)


async def test_a_redemption_bound_to_an_earlier_server_start_is_refused(
    pair: Pair, empty_database_url: str
) -> None:
    """PostgreSQL: `used_nonces` is unlogged, so a redemption carries the server start its
    nonce key is bound to; bound to another (the server has restarted since), nothing is
    recorded and `NonceScopeChanged` tells the nonce service to bind its key anew."""
    _postgres_only(empty_database_url)
    expires = pair.clock.now() + dt.timedelta(hours=1)
    scope = await pair.a.load_nonce_scope()
    assert scope.startswith(b"postgresql-start:")
    assert pair.a.nonce_scope_can_change
    account = await _account(pair.a, pair.clock.now())
    redemptions: list[Callable[[], Awaitable[bool | None]]] = [
        lambda: pair.a.redeem_nonce("after-restart", expires),
        lambda: pair.a.redeem_nonce_for_account(
            "after-restart", expires, account_id=account.id, thumbprint=account.thumbprint
        ),
    ]
    for redeem in redemptions:
        pair.a._pg_started = -1  # as if the key was bound before a restart of the server
        with pytest.raises(NonceScopeChanged):
            await redeem()
        assert await pair.a.load_nonce_scope() == scope  # the start as it is
    assert await pair.a.redeem_nonce("after-restart", expires)
    assert not await pair.b.redeem_nonce("after-restart", expires)
    # An account that changed is still told apart from a restart.
    assert (
        await pair.a.redeem_nonce_for_account(
            "other", expires, account_id=account.id, thumbprint="not-its-key"
        )
        is None
    )


async def test_used_nonces_are_purged_after_they_expire(pair: Pair) -> None:
    now = pair.clock.now()
    assert await pair.a.redeem_nonce("old", now - SECOND)
    assert await pair.a.redeem_nonce("live", now + SECOND)
    assert await pair.b.purge_used_nonces(now) == 1
    assert not await pair.a.redeem_nonce("live", now + SECOND)


async def _all_listed(store: Storage, account: Account, *, limit: int) -> list[list[str]]:
    """Every page of the account's orders list, following the cursor to the end."""
    pages: list[list[str]] = []
    after: tuple[int, str] | None = None
    while True:
        ids, after = await store.list_order_ids(account.id, after=after, limit=limit)
        pages.append(ids)
        if after is None:
            return pages


async def test_orders_list_leaves_out_invalid_and_expired_orders_in_full_pages(
    pair: Pair,
) -> None:
    """RFC 8555 §7.1.2.1: invalid orders (expired pending or ready ones too) are not
    listed, and left out by the query, so every page but the last is full."""
    start = pair.clock.now()
    account, other = await _account(pair.a, start), await _account(pair.a, start)

    async def made(status: OrderStatus, step: int) -> tuple[Order, list[Authorization]]:
        # One microsecond apart: the list is in creation order.
        at = start + step * dt.timedelta(microseconds=1)
        return await _order(pair.a, account, at, names=1, status=status)

    pending, _ = await made(OrderStatus.PENDING, 0)
    deactivated, (authz,) = await made(OrderStatus.PENDING, 1)
    ready, _ = await made(OrderStatus.READY, 2)
    expiring = Order(
        id=_id(),
        account_id=account.id,
        status=OrderStatus.PENDING,
        identifiers=(Identifier(type="dns", value="expiring.test"),),
        authz_ids=(),
        expires=start + SECOND,
        created_at=start + 3 * dt.timedelta(microseconds=1),
    )
    assert await pair.a.create_order(expiring, []) == "created"
    finalized, _ = await made(OrderStatus.READY, 4)
    await _order(pair.a, other, start, names=1, status=OrderStatus.PENDING)
    assert await pair.a.deactivate_authz(authz.id)
    assert await pair.a.begin_finalize(
        finalized.id, csr_der=b"csr", serial=secrets.token_hex(16), lease_until=start
    )
    # Before its expiry the short-lived order is listed; the invalid one is not.
    assert await _all_listed(pair.b, account, limit=2) == [
        [pending.id, ready.id],
        [expiring.id, finalized.id],
    ]
    stored = await pair.b.get_order(deactivated.id)
    assert stored is not None
    assert stored.status == OrderStatus.INVALID
    # Past it, the pending (`expiring`) order reads invalid and leaves the list; a
    # processing order does not expire (RFC 8555 §7.1.6), so the first page is full.
    pair.clock.advance(2 * SECOND)
    assert await _all_listed(pair.b, account, limit=2) == [
        [pending.id, ready.id],
        [finalized.id],
    ]
    assert await _all_listed(pair.b, account, limit=3) == [[pending.id, ready.id, finalized.id]]
    # Past the expiry of the others as well: only the processing order is left.
    pair.clock.advance(dt.timedelta(days=8))
    assert await _all_listed(pair.b, account, limit=2) == [[finalized.id]]

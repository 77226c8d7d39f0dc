"""Nonce keys: shared through the database, bound to what remembers redemptions."""

from __future__ import annotations

import datetime as dt

import pytest

from acme_ca.clock import FakeClock
from acme_ca.errors import AcmeError, ProblemType
from acme_ca.nonces import NonceService
from acme_ca.storage.store import NonceScopeChanged

pytestmark = pytest.mark.asyncio

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class _Settings:
    """Just enough storage for `NonceService`: one shared key, a scope, a used set.

    With `can_change`, as on PostgreSQL: `restart()` moves the scope and empties the
    used set (an unlogged table after a crash); a redemption bound to an older scope
    raises `NonceScopeChanged`, as the store's guarded INSERT does."""

    def __init__(
        self,
        scope: bytes,
        key: str = "c2hhcmVkIGtleSBzaGFyZWQga2V5IHNoYXJlZCBrZXk=",
        *,
        can_change: bool = False,
    ) -> None:
        self.scope = scope
        self._key = key
        self.used: set[str] = set()
        self.nonce_scope_can_change = can_change
        self._loaded: bytes | None = None

    async def get_or_create_setting(self, name: str, default: str) -> str:
        return self._key

    async def load_nonce_scope(self) -> bytes:
        self._loaded = self.scope
        return self.scope

    def restart(self, scope: bytes) -> None:
        self.scope = scope
        self.used.clear()

    async def redeem_nonce(self, value: str, expires: dt.datetime) -> bool:
        if self._loaded != self.scope:
            raise NonceScopeChanged()
        if value in self.used:
            return False
        self.used.add(value)
        return True


async def _service(storage: _Settings) -> NonceService:
    return await NonceService.create(storage, FakeClock(NOW))  # type: ignore[arg-type]


async def test_same_scope_accepts_the_others_nonce_once() -> None:
    shared = _Settings(b"boot-1")
    a, b = await _service(shared), await _service(shared)
    nonce = a.issue()
    await b.redeem(nonce)
    with pytest.raises(AcmeError) as again:
        await a.redeem(nonce)
    assert again.value.type == ProblemType.BAD_NONCE


async def test_another_scope_refuses_the_nonce() -> None:
    # SQLite binds the key to the boot: after a reboot, older nonces fail their MAC.
    before, after = await _service(_Settings(b"boot-1")), await _service(_Settings(b"boot-2"))
    with pytest.raises(AcmeError) as refused:
        await after.redeem(before.issue())
    assert refused.value.type == ProblemType.BAD_NONCE
    assert "not issued by this server" in refused.value.detail


# acme.sh (_send_signed_request) retries a badNonce only when the detail contains
# Boulder's wording; with any other detail it gives up on the first refused nonce.
ACME_SH_RETRIES_ON = "JWS has an invalid anti-replay nonce"


async def _refusal(service: NonceService, nonce: str) -> AcmeError:
    with pytest.raises(AcmeError) as refused:
        await service.redeem(nonce)
    assert refused.value.type == ProblemType.BAD_NONCE
    return refused.value


async def test_used_nonce_detail_is_one_acme_sh_retries() -> None:
    service = await _service(_Settings(b"boot-1"))
    nonce = service.issue()
    await service.redeem(nonce)
    assert ACME_SH_RETRIES_ON in (await _refusal(service, nonce)).detail


async def test_expired_nonce_detail_is_one_acme_sh_retries() -> None:
    clock = FakeClock(NOW)
    service = await NonceService.create(_Settings(b"boot-1"), clock)  # type: ignore[arg-type]
    nonce = service.issue()
    clock.advance(dt.timedelta(hours=2))
    assert ACME_SH_RETRIES_ON in (await _refusal(service, nonce)).detail


@pytest.mark.parametrize("nonce", ["not-a-nonce", "AAAA", "A" * 43], ids=["chars", "short", "mac"])
async def test_foreign_nonce_detail_is_one_acme_sh_retries(nonce: str) -> None:
    # A nonce of another server, or one mangled on the way: the client must fetch anew.
    service = await _service(_Settings(b"boot-1"))
    assert ACME_SH_RETRIES_ON in (await _refusal(service, nonce)).detail


async def test_missing_nonce_keeps_its_own_detail() -> None:
    service = await _service(_Settings(b"boot-1"))
    assert (await _refusal(service, "")).detail == "JWS has no anti-replay nonce"


async def test_a_nonce_from_before_a_database_restart_is_refused() -> None:
    """PostgreSQL keeps redemptions in an unlogged table, which a crash empties: a nonce
    issued (and even redeemed) before the restart must not redeem after it."""
    storage = _Settings(b"postgresql-start:1", can_change=True)
    service = await _service(storage)
    used, unused = service.issue(), service.issue()
    await service.redeem(used)
    storage.restart(b"postgresql-start:2")
    for nonce in (used, unused):
        refusal = await _refusal(service, nonce)
        assert ACME_SH_RETRIES_ON in refusal.detail
    # The service has bound its key to the new start: its new nonces redeem once.
    fresh = service.issue()
    await service.redeem(fresh)
    await _refusal(service, fresh)


async def test_a_process_that_saw_the_restart_first_is_trusted_by_the_others() -> None:
    """Another process bound its key to the new start first; a MAC failing here makes
    this one look at the start again (at most once a second) and take the nonce."""
    clock = FakeClock(NOW)
    before = _Settings(b"postgresql-start:1", can_change=True)
    late = await NonceService.create(before, clock)  # type: ignore[arg-type]
    after = _Settings(b"postgresql-start:2", can_change=True)
    first = await NonceService.create(after, clock)  # type: ignore[arg-type]
    before.restart(b"postgresql-start:2")
    await _refusal(late, first.issue())  # looked at the start less than a second ago
    clock.advance(dt.timedelta(seconds=2))
    await late.redeem(first.issue())


async def test_sqlite_never_looks_at_its_scope_again() -> None:
    storage = _Settings(b"boot-1")
    service = await _service(storage)
    other = await _service(_Settings(b"boot-2"))
    storage.scope = b"boot-2"  # cannot happen under a running process; never read again
    assert "not issued by this server" in (await _refusal(service, other.issue())).detail

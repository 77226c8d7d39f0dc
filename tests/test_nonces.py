"""Nonce keys: shared through the database, bound to what remembers redemptions."""

from __future__ import annotations

import datetime as dt

import pytest

from acme_ca.clock import FakeClock
from acme_ca.errors import AcmeError, ProblemType
from acme_ca.nonces import NonceService

pytestmark = pytest.mark.asyncio

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class _Settings:
    """Just enough storage for `NonceService`: one shared key, a scope, a used set."""

    def __init__(
        self, scope: bytes, key: str = "c2hhcmVkIGtleSBzaGFyZWQga2V5IHNoYXJlZCBrZXk="
    ) -> None:
        self.nonce_scope = scope
        self._key = key
        self.used: set[str] = set()

    async def get_or_create_setting(self, name: str, default: str) -> str:
        return self._key

    async def redeem_nonce(self, value: str, expires: dt.datetime) -> bool:
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

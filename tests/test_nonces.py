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

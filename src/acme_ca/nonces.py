"""Anti-replay nonces (RFC 8555 §6.5), valid across processes and hosts, each once.

A nonce is self-authenticating: random bytes and an expiry, MACed with a key kept in
the database, so issuing one costs no write. Redeeming one records it where a second
redemption fails, whichever process it reaches: on SQLite a side file that a reboot
may lose (`storage.nonce_log`), on PostgreSQL the UNLOGGED `used_nonces` table, which
a crash of the server empties. So the MAC key is bound to what keeps the redemptions:
the machine's boot, or the PostgreSQL server's start. After either, every nonce
issued before fails its MAC (or its redemption), and none can be replayed. Nothing
but the database is shared.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import secrets
import struct

from acme_ca.clock import Clock
from acme_ca.errors import AcmeError, ProblemType
from acme_ca.model import Account
from acme_ca.storage.store import NonceScopeChanged, Storage

__all__ = ["NonceService", "bad_nonce"]

_RANDOM_BYTES = 12
_MAC_BYTES = 12
_LENGTH = 8 + _RANDOM_BYTES + _MAC_BYTES
KEY_SETTING = "nonce_hmac_key"


def bad_nonce(detail: str) -> AcmeError:
    return AcmeError(type=ProblemType.BAD_NONCE, detail=detail)


def _invalid_nonce(reason: str) -> AcmeError:
    # RFC 8555 §6.5 leaves the detail free; clients are to retry a badNonce with the
    # fresh nonce. acme.sh retries only when the detail contains Boulder's wording
    # ("JWS has an invalid anti-replay nonce", _send_signed_request) and otherwise
    # gives up on the first stale nonce, so a present but refused nonce says that.
    return bad_nonce(f"JWS has an invalid anti-replay nonce: {reason}")


# A MAC that fails makes a PostgreSQL CA look at the server's start again at most this
# often: another process may have seen a restart first and issued under the new key.
_RESCOPE_AFTER = dt.timedelta(seconds=1)


def _scoped_key(shared: bytes, scope: bytes) -> bytes:
    # Nonces die with what remembers their redemptions (module docstring).
    return hmac.new(shared, b"nonce-key:" + scope, hashlib.sha256).digest()


class NonceService:
    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        shared_key: bytes,
        scope: bytes,
        lifetime: dt.timedelta,
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._shared_key = shared_key
        self._scope = scope
        self._key = _scoped_key(shared_key, scope)
        self._lifetime = lifetime
        self._scoped_at = clock.now()

    @classmethod
    async def create(
        cls, storage: Storage, clock: Clock, lifetime: dt.timedelta = dt.timedelta(hours=1)
    ) -> NonceService:
        """Load the shared MAC key, creating it on first start, and bind it to its scope."""
        encoded = await storage.get_or_create_setting(
            KEY_SETTING, base64.b64encode(secrets.token_bytes(32)).decode("ascii")
        )
        scope = await storage.load_nonce_scope()
        return cls(storage, clock, base64.b64decode(encoded), scope, lifetime)

    async def _rescope(self) -> bool:
        """Bind the key to the scope as it is now; whether it changed."""
        scope = await self._storage.load_nonce_scope()
        self._scoped_at = self._clock.now()
        if scope == self._scope:
            return False
        self._scope, self._key = scope, _scoped_key(self._shared_key, scope)
        return True

    def _mac(self, body: bytes) -> bytes:
        # The one-shot C digest: `hmac.new` builds two hash objects in Python per call.
        return hmac.digest(self._key, body, "sha256")[:_MAC_BYTES]

    def issue(self) -> str:
        expires = int((self._clock.now() + self._lifetime).timestamp())
        body = struct.pack(">Q", expires) + secrets.token_bytes(_RANDOM_BYTES)
        return base64.urlsafe_b64encode(body + self._mac(body)).rstrip(b"=").decode("ascii")

    async def redeem(self, nonce: str | None, *, account: Account | None = None) -> bool:
        """Raise `badNonce` unless `nonce` is ours, unexpired and unused.

        With `account` (a copy the caller kept), the nonce is redeemed only if that
        account is still valid with the same key, in the same statement; False (and the
        nonce still unused) when it no longer is. Otherwise True.
        """
        if not nonce:
            raise bad_nonce("JWS has no anti-replay nonce")
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (binascii.Error, ValueError):
            raise _invalid_nonce("it is malformed") from None
        # Only the canonical spelling: a lenient decoder would let `N` and `N!` both redeem.
        canonical = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
        if len(raw) != _LENGTH or canonical != nonce:
            raise _invalid_nonce("it is malformed")
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(body)) and not await self._issued_since(
            body, mac
        ):
            raise _invalid_nonce("it was not issued by this server")
        (expires_s,) = struct.unpack(">Q", body[:8])
        expires = dt.datetime.fromtimestamp(expires_s, dt.UTC)
        if expires <= self._clock.now():
            raise _invalid_nonce("it has expired")
        try:
            if account is not None:
                redeemed = await self._storage.redeem_nonce_for_account(
                    nonce, expires, account_id=account.id, thumbprint=account.thumbprint
                )
                if redeemed is None:
                    return False
            else:
                redeemed = await self._storage.redeem_nonce(nonce, expires)
        except NonceScopeChanged:
            await self._rescope()
            raise _invalid_nonce("it was issued before the database restarted") from None
        if not redeemed:
            raise _invalid_nonce("it has already been used")
        return True

    async def _issued_since(self, body: bytes, mac: bytes) -> bool:
        """Whether a nonce whose MAC failed is good under the scope as it is now: on
        PostgreSQL another process may have seen the server restart first."""
        if not self._storage.nonce_scope_can_change:
            return False
        if self._clock.now() - self._scoped_at < _RESCOPE_AFTER or not await self._rescope():
            return False
        return hmac.compare_digest(mac, self._mac(body))

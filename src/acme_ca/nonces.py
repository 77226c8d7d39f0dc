"""Anti-replay nonces (RFC 8555 §6.5), valid across processes and hosts, each once.

A nonce is self-authenticating: random bytes and an expiry, MACed with a key kept in
the database, so issuing one costs no write. Redeeming one records it in the
`used_nonces` table (on SQLite, a side file bound to the machine's boot: see
`storage.nonce_log`), whose primary key makes a second redemption fail, whichever
process it reaches. Nothing but the database is shared.
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
from acme_ca.storage.store import Storage

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


class NonceService:
    def __init__(self, storage: Storage, clock: Clock, key: bytes, lifetime: dt.timedelta) -> None:
        self._storage = storage
        self._clock = clock
        self._key = key
        self._lifetime = lifetime

    @classmethod
    async def create(
        cls, storage: Storage, clock: Clock, lifetime: dt.timedelta = dt.timedelta(hours=1)
    ) -> NonceService:
        """Load the shared MAC key, creating it on first start."""
        encoded = await storage.get_or_create_setting(
            KEY_SETTING, base64.b64encode(secrets.token_bytes(32)).decode("ascii")
        )
        key = base64.b64decode(encoded)
        scope = storage.nonce_scope
        if scope:
            # Nonces die with what remembers their redemptions (storage.nonce_log).
            key = hmac.new(key, b"nonce-key:" + scope, hashlib.sha256).digest()
        return cls(storage, clock, key, lifetime)

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
        if not hmac.compare_digest(mac, self._mac(body)):
            raise _invalid_nonce("it was not issued by this server")
        (expires_s,) = struct.unpack(">Q", body[:8])
        expires = dt.datetime.fromtimestamp(expires_s, dt.UTC)
        if expires <= self._clock.now():
            raise _invalid_nonce("it has expired")
        if account is not None:
            redeemed = await self._storage.redeem_nonce_for_account(
                nonce, expires, account_id=account.id, thumbprint=account.thumbprint
            )
            if redeemed is None:
                return False
        else:
            redeemed = await self._storage.redeem_nonce(nonce, expires)
        if not redeemed:
            raise _invalid_nonce("it has already been used")
        return True

"""External Account Binding rules (RFC 8555 §7.3.4) and the operator's key management.

The front end has checked the binding's shape (`protocol.eab.parse_eab`); here the
key must exist, be unrevoked, carry a valid MAC, and not be bound already (unless
configuration lets one key bind many accounts). Binding is a guarded UPDATE, so
two processes cannot both bind a single-use key.
"""

from __future__ import annotations

import secrets

from acme_ca.errors import unauthorized
from acme_ca.protocol.eab import ExternalAccountBinding, verify_eab_mac
from acme_ca.storage.policy import EabKey, PolicyStore

__all__ = ["EabBinder", "create_eab_key", "list_eab_keys", "revoke_eab_key"]

HMAC_KEY_BYTES = 32  # 256 bits: the HS256 block-size recommendation of RFC 2104 §3


class EabBinder:
    def __init__(self, store: PolicyStore, *, allow_many: bool) -> None:
        self._store = store
        self._allow_many = allow_many

    async def check(self, binding: ExternalAccountBinding) -> EabKey:
        """`unauthorized` unless the binding may create an account now."""
        key = await self._store.get_eab_key(binding.kid)
        if key is None:
            raise unauthorized(f"Unknown external account binding key ID {binding.kid!r}")
        if key.revoked_at is not None:
            raise unauthorized(f"External account binding key {binding.kid!r} is revoked")
        verify_eab_mac(binding, key.hmac_key)
        if key.bind_count and not self._allow_many:
            raise unauthorized(
                f"External account binding key {binding.kid!r} is already bound to an account"
            )
        return key

    async def bind(self, kid: str, account_id: str) -> None:
        if not await self._store.bind_eab_key(kid, account_id, allow_many=self._allow_many):
            # Lost a race with another request, or revoked in between.
            raise unauthorized(f"External account binding key {kid!r} can no longer be used")

    async def release(self, kid: str, account_id: str) -> None:
        await self._store.release_eab_key(kid, account_id)


# ---- operator commands (`acme-ca admin eab ...`) ------------------------------------


async def create_eab_key(store: PolicyStore, *, label: str | None = None) -> EabKey:
    """A new key ID and random HMAC key; the caller shows the key to the operator once."""
    return await store.create_eab_key(
        kid=f"kid-{secrets.token_urlsafe(12)}",
        hmac_key=new_hmac_key(),
        label=label,
    )


def new_hmac_key() -> bytes:
    """Random HMAC key bytes whose base64url form does not start with "-".

    Operators paste the key into command lines; one starting with "-" reads as an
    option (certbot: `--eab-hmac-key: expected one argument`), so it is drawn again
    (62 is "-" in the base64url alphabet, RFC 4648 §5).
    """
    while True:
        key = secrets.token_bytes(HMAC_KEY_BYTES)
        if key[0] >> 2 != 62:
            return key


async def list_eab_keys(store: PolicyStore) -> list[EabKey]:
    return await store.list_eab_keys()


async def revoke_eab_key(store: PolicyStore, kid: str) -> bool:
    """Accounts already bound keep working; the key binds no new account."""
    return await store.revoke_eab_key(kid)

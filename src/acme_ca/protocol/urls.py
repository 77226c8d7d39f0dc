"""The URL layout of the ACME API, shared by the router and the resource renderer."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Urls"]


@dataclass(frozen=True, slots=True)
class Urls:
    """Absolute URLs under `base` (scheme://host[:port], no trailing slash)."""

    base: str

    @property
    def directory(self) -> str:
        return f"{self.base}/directory"

    @property
    def new_nonce(self) -> str:
        return f"{self.base}/acme/new-nonce"

    @property
    def new_account(self) -> str:
        return f"{self.base}/acme/new-account"

    @property
    def new_order(self) -> str:
        return f"{self.base}/acme/new-order"

    @property
    def new_authz(self) -> str:
        return f"{self.base}/acme/new-authz"

    @property
    def revoke_cert(self) -> str:
        return f"{self.base}/acme/revoke-cert"

    @property
    def key_change(self) -> str:
        return f"{self.base}/acme/key-change"

    @property
    def renewal_info(self) -> str:
        return f"{self.base}/acme/renewal-info"

    @property
    def terms_of_service(self) -> str:
        return f"{self.base}/terms"

    @property
    def openapi(self) -> str:
        return f"{self.base}/openapi.yaml"

    def account(self, account_id: str) -> str:
        return f"{self.base}/acme/acct/{account_id}"

    def account_orders(self, account_id: str) -> str:
        return f"{self.base}/acme/acct/{account_id}/orders"

    def order(self, order_id: str) -> str:
        return f"{self.base}/acme/order/{order_id}"

    def finalize(self, order_id: str) -> str:
        return f"{self.base}/acme/order/{order_id}/finalize"

    def authz(self, authz_id: str) -> str:
        return f"{self.base}/acme/authz/{authz_id}"

    def challenge(self, authz_id: str, challenge_id: str) -> str:
        return f"{self.base}/acme/chall/{authz_id}/{challenge_id}"

    def certificate(self, cert_id: str) -> str:
        return f"{self.base}/acme/cert/{cert_id}"

    def alternate_certificate(self, cert_id: str, index: int) -> str:
        return f"{self.base}/acme/cert/{cert_id}/{index}"

    @property
    def account_prefix(self) -> str:
        return f"{self.base}/acme/acct/"

"""The URL layout of the status listener, shared by its routes and the CA's leaves."""

from __future__ import annotations

from dataclasses import dataclass

from acme_ca.ca.crl import ISSUER_PLACEHOLDER, SHARD_PLACEHOLDER, fill_url

__all__ = ["RevocationUrls"]


@dataclass(frozen=True, slots=True)
class RevocationUrls:
    """Absolute URLs under `base` (http://host[:port], no trailing slash)."""

    base: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", self.base.rstrip("/"))

    @property
    def crl_template(self) -> str:
        """For `CertificateAuthority(crl_url=...)`: one URL per issuer and shard."""
        return f"{self.base}/crl/{ISSUER_PLACEHOLDER}/{SHARD_PLACEHOLDER}.crl"

    @property
    def issuer_template(self) -> str:
        """For `CertificateAuthority(issuer_url=...)`: AIA caIssuers (RFC 5280 §4.2.2.1)."""
        return f"{self.base}/issuer/{ISSUER_PLACEHOLDER}.der"

    @property
    def ocsp(self) -> str:
        return f"{self.base}/ocsp"

    def crl(self, issuer_id: str, shard: int) -> str:
        return fill_url(self.crl_template, issuer=issuer_id, shard=shard)

    def issuer(self, issuer_id: str) -> str:
        return fill_url(self.issuer_template, issuer=issuer_id)

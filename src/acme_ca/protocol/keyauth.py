"""Key authorizations (RFC 8555 §8.1) and their digests for dns-01 and tls-alpn-01."""

from __future__ import annotations

import base64
import hashlib

__all__ = ["dns01_txt_value", "key_authorization"]


def key_authorization(token: str, account_thumbprint: str) -> str:
    return f"{token}.{account_thumbprint}"


def dns01_txt_value(key_authz: str) -> str:
    # RFC 8555 §8.4: base64url(SHA-256(key authorization)), no padding.
    digest = hashlib.sha256(key_authz.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

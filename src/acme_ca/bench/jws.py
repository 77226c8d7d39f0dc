"""Client-side JOSE for ACME: account keys, JWKs, thumbprints and flattened JWS.

Signs only; verification is the server's business. Imports nothing from acme_ca,
so the benchmark client stays usable against any ACME server.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

__all__ = [
    "KeyKind",
    "PrivateKey",
    "PublicKey",
    "b64url",
    "generate_key",
    "jwk_of",
    "jws_alg",
    "jwk_thumbprint",
    "sign_jws",
]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


class KeyKind(enum.StrEnum):
    """Key shapes the benchmark and test clients generate."""

    P256 = "p256"
    P384 = "p384"
    RSA2048 = "rsa2048"
    RSA3072 = "rsa3072"
    ED25519 = "ed25519"


def generate_key(kind: KeyKind | str) -> PrivateKey:
    match KeyKind(kind):
        case KeyKind.P256:
            return ec.generate_private_key(ec.SECP256R1())
        case KeyKind.P384:
            return ec.generate_private_key(ec.SECP384R1())
        case KeyKind.RSA2048:
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        case KeyKind.RSA3072:
            return rsa.generate_private_key(public_exponent=65537, key_size=3072)
        case KeyKind.ED25519:
            return ed25519.Ed25519PrivateKey.generate()


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(n: int, size: int | None = None) -> str:
    length = size if size is not None else max(1, (n.bit_length() + 7) // 8)
    return b64url(n.to_bytes(length, "big"))


_CURVES: dict[str, tuple[str, int, hashes.HashAlgorithm, str]] = {
    # curve name -> (JWK crv, coordinate bytes, hash, JWS alg); RFC 7518 §3.4, §6.2.1
    "secp256r1": ("P-256", 32, hashes.SHA256(), "ES256"),
    "secp384r1": ("P-384", 48, hashes.SHA384(), "ES384"),
    "secp521r1": ("P-521", 66, hashes.SHA512(), "ES512"),
}


def _curve(
    key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey,
) -> tuple[str, int, hashes.HashAlgorithm, str]:
    try:
        return _CURVES[key.curve.name]
    except KeyError:
        raise ValueError(f"unsupported curve {key.curve.name}") from None


def jwk_of(key: PrivateKey | PublicKey) -> dict[str, str]:
    """The public JWK of `key` with only the required members (RFC 7517, RFC 7518 §6)."""
    public = key.public_key() if isinstance(key, PrivateKey) else key
    if isinstance(public, ec.EllipticCurvePublicKey):
        crv, size, _, _ = _curve(public)
        nums = public.public_numbers()
        return {"crv": crv, "kty": "EC", "x": _uint(nums.x, size), "y": _uint(nums.y, size)}
    if isinstance(public, rsa.RSAPublicKey):
        rnums = public.public_numbers()
        return {"e": _uint(rnums.e), "kty": "RSA", "n": _uint(rnums.n)}
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"crv": "Ed25519", "kty": "OKP", "x": b64url(raw)}


def jws_alg(key: PrivateKey) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return _curve(key)[3]
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    return "EdDSA"  # RFC 8037 §3.1


def jwk_thumbprint(key: PrivateKey | PublicKey) -> str:
    """RFC 7638 thumbprint: SHA-256 over the required members, sorted, no whitespace."""
    canonical = json.dumps(jwk_of(key), sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def _sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        _, size, hash_alg, _ = _curve(key)
        # RFC 7518 §3.4: JWS wants R || S, each left-padded, not the DER that OpenSSL emits.
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hash_alg)))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(data)


def sign_jws(
    key: PrivateKey,
    payload: Mapping[str, Any] | None,
    *,
    url: str,
    nonce: str | None,
    kid: str | None = None,
) -> dict[str, str]:
    """A flattened JWS (RFC 7515 §7.2.2) as ACME wants it (RFC 8555 §6.2).

    `payload=None` gives the empty payload of POST-as-GET (RFC 8555 §6.3). With `kid`
    the header names the account; without it, it carries the public `jwk`.
    """
    protected: dict[str, Any] = {"alg": jws_alg(key), "url": url}
    if nonce is not None:
        protected["nonce"] = nonce
    if kid is not None:
        protected["kid"] = kid
    else:
        protected["jwk"] = jwk_of(key)
    protected_b64 = b64url(json.dumps(protected, separators=(",", ":")).encode("utf-8"))
    payload_b64 = (
        "" if payload is None else b64url(json.dumps(payload, separators=(",", ":")).encode())
    )
    signature = _sign(key, f"{protected_b64}.{payload_b64}".encode("ascii"))
    return {"protected": protected_b64, "payload": payload_b64, "signature": b64url(signature)}

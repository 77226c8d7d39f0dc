"""Flattened JWS parsing and verification for ACME requests (RFC 8555 §6.2, RFC 7515).

Pure: no I/O, no storage. Parsing checks the shape of a request; `verify_signature`
checks the signature against a key the caller has looked up. Each check is a small
function named for its rule, as Boulder's `wfe2/verify.go`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, JWKRegistry, OKPKey, RSAKey

from acme_ca.errors import AcmeError, ProblemType, malformed, unauthorized

__all__ = [
    "ALLOWED_ALGORITHMS",
    "JoseKey",
    "ParsedJws",
    "ProtectedHeader",
    "b64url_decode",
    "b64url_encode",
    "import_public_jwk",
    "loads_strict",
    "parse_flattened",
    "public_key_of",
    "thumbprint",
    "verify_signature",
]

JoseKey = RSAKey | ECKey | OKPKey

# RFC 8555 §6.2: servers MUST NOT accept `none` or MAC algorithms. Every algorithm
# this module can verify; a server narrows it to what its key policy accepts
# (`KeyPolicy.jws_algorithms`), so that `badSignatureAlgorithm` lists only those.
ALLOWED_ALGORITHMS: tuple[str, ...] = ("RS256", "ES256", "ES384", "ES512", "EdDSA")
_EC_ALG_FOR_CURVE = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_FLATTENED_MEMBERS = frozenset({"protected", "payload", "signature"})
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtectedHeader:
    alg: str
    nonce: str | None
    url: str | None
    jwk: dict[str, Any] | None
    kid: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedJws:
    """A structurally valid flattened JWS whose signature is not yet verified."""

    header: ProtectedHeader
    protected_b64: str
    payload_b64: str
    payload: bytes
    signature: bytes

    @property
    def is_post_as_get(self) -> bool:
        # RFC 8555 §6.3: POST-as-GET carries the empty string as payload.
        return self.payload_b64 == ""

    def payload_json(self) -> dict[str, Any]:
        """The payload as a JSON object; `malformed` for anything else."""
        if self.is_post_as_get:
            raise malformed("Request payload is empty; expected a JSON object")
        value = loads_strict(self.payload, what="JWS payload")
        if not isinstance(value, dict):
            raise malformed("JWS payload must be a JSON object")
        return value


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(value: str, *, what: str) -> bytes:
    """Strict base64url without padding (RFC 7515 §2)."""
    if not isinstance(value, str) or not _B64URL.fullmatch(value) or len(value) % 4 == 1:
        raise malformed(f"{what} is not valid base64url without padding")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise malformed(f"{what} is not valid base64url") from exc


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise malformed(f"Duplicate JSON member {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    # RFC 8259 §6: NaN and Infinity are not JSON, though Python's parser takes them.
    raise ValueError(f"{name} is not a JSON number")


_STRICT_DECODER = json.JSONDecoder(
    object_pairs_hook=_reject_duplicate_keys, parse_constant=_reject_constant
)


def loads_strict(data: bytes | str, *, what: str) -> Any:
    """JSON with duplicate members refused (RFC 7515 §5.2 step 4, RFC 8259).

    Bytes must be UTF-8 (RFC 8259 §8.1); `json.loads` would also guess UTF-16/32.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        # One decoder for every call: `json.loads` with hooks builds a new one each time.
        value = _STRICT_DECODER.decode(text)
    except AcmeError:
        raise
    except (ValueError, RecursionError) as exc:
        # ValueError covers UnicodeDecodeError and over-long integers (int_max_str_digits).
        raise malformed(f"{what} is not valid JSON") from exc
    # RFC 7493 §2.1 (I-JSON): no lone surrogates; and no NUL, which no ACME member
    # needs and PostgreSQL text cannot hold. Only a \u escape can make either.
    if "\\u" in text and _has_unstorable_text(value):
        raise malformed(f"{what} holds a NUL character or an unpaired surrogate")
    return value


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _has_unstorable_text(value: Any) -> bool:
    if isinstance(value, str):
        return _UNSTORABLE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_unstorable_text(k) or _has_unstorable_text(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_unstorable_text(v) for v in value)
    return False


def parse_flattened(body: bytes, *, algorithms: Sequence[str] = ALLOWED_ALGORITHMS) -> ParsedJws:
    """Parse an ACME request body; raises `AcmeError` for every rule it breaks.

    `algorithms` are the accepted `alg` values, a subset of `ALLOWED_ALGORITHMS`;
    any other is `badSignatureAlgorithm` listing them (RFC 8555 §6.2).
    """
    value = loads_strict(body, what="Request body")
    if not isinstance(value, dict):
        # A compact JWS arrives as a JSON string, or not as JSON at all.
        raise malformed("Request body must be a flattened JWS JSON object (RFC 8555 §6.2)")
    _check_flattened_members(value)
    protected_b64 = value["protected"]
    payload_b64 = value["payload"]
    signature_b64 = value["signature"]
    for name, member in (
        ("protected", protected_b64),
        ("payload", payload_b64),
        ("signature", signature_b64),
    ):
        if not isinstance(member, str):
            raise malformed(f"JWS member {name!r} must be a string")
    header_json = loads_strict(
        b64url_decode(protected_b64, what="JWS protected header"), what="JWS protected header"
    )
    if not isinstance(header_json, dict):
        raise malformed("JWS protected header must be a JSON object")
    header = _parse_header(header_json, algorithms)
    payload = b64url_decode(payload_b64, what="JWS payload")
    signature = b64url_decode(signature_b64, what="JWS signature")
    if not signature:
        raise malformed("JWS signature is empty")
    return ParsedJws(
        header=header,
        protected_b64=protected_b64,
        payload_b64=payload_b64,
        payload=payload,
        signature=signature,
    )


def _check_flattened_members(value: dict[str, Any]) -> None:
    if "signatures" in value:
        raise malformed("General JWS serialization is not allowed; use flattened (RFC 8555 §6.2)")
    if "header" in value:
        # RFC 8555 §6.2: everything must be integrity-protected.
        raise malformed("JWS unprotected header is not allowed (RFC 8555 §6.2)")
    missing = _FLATTENED_MEMBERS - value.keys()
    if missing:
        raise malformed(f"JWS is missing {', '.join(sorted(missing))}")
    extra = value.keys() - _FLATTENED_MEMBERS
    if extra:
        raise malformed(f"JWS has unexpected members: {', '.join(sorted(extra))}")


def _parse_header(header: dict[str, Any], algorithms: Sequence[str]) -> ProtectedHeader:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms or alg not in ALLOWED_ALGORITHMS:
        raise bad_signature_algorithm(f"JWS algorithm {alg!r} is not supported", algorithms)
    if "crit" in header or "b64" in header:
        # RFC 7515 §4.1.11 / RFC 7797: we understand no extensions, so refuse them.
        raise malformed("JWS 'crit' and 'b64' header parameters are not supported")
    has_jwk = "jwk" in header
    has_kid = "kid" in header
    if has_jwk == has_kid:
        # RFC 8555 §6.2: exactly one of `jwk` and `kid`.
        raise malformed("JWS protected header must contain exactly one of 'jwk' and 'kid'")
    jwk = header.get("jwk")
    if has_jwk and not isinstance(jwk, dict):
        raise malformed("JWS 'jwk' must be a JSON object")
    kid = header.get("kid")
    if has_kid and (not isinstance(kid, str) or not kid):
        raise malformed("JWS 'kid' must be a non-empty string")
    nonce = header.get("nonce")
    if nonce is not None and not isinstance(nonce, str):
        raise AcmeError(type=ProblemType.BAD_NONCE, detail="JWS 'nonce' must be a string")
    url = header.get("url")
    if url is not None and not isinstance(url, str):
        raise malformed("JWS 'url' must be a string")
    return ProtectedHeader(alg=alg, nonce=nonce, url=url, jwk=jwk, kid=kid)


def bad_signature_algorithm(
    detail: str, algorithms: Sequence[str] = ALLOWED_ALGORITHMS
) -> AcmeError:
    # RFC 8555 §6.2: list the algorithms we accept.
    return AcmeError(
        type=ProblemType.BAD_SIGNATURE_ALGORITHM,
        detail=f"{detail}; accepted: {', '.join(algorithms)}",
        extra={"algorithms": list(algorithms)},
    )


def import_public_jwk(jwk: dict[str, Any]) -> JoseKey:
    """A public JWK as a key object; private members and unknown key types are refused."""
    if _PRIVATE_MEMBERS & jwk.keys():
        raise AcmeError(type=ProblemType.BAD_PUBLIC_KEY, detail="JWK contains private key material")
    kty = jwk.get("kty")
    if kty is None:
        # RFC 7517 §4.1: "kty" is required (lacme-accountd with a keyid sends "jwk": {}).
        raise AcmeError(type=ProblemType.BAD_PUBLIC_KEY, detail='JWK has no "kty" member')
    if kty not in ("RSA", "EC", "OKP"):
        raise AcmeError(type=ProblemType.BAD_PUBLIC_KEY, detail=f"Unsupported JWK key type {kty!r}")
    try:
        # Key strength is judged by `policy.keys` (badPublicKey), not by joserfc's warning.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)
            key = JWKRegistry.import_key({k: v for k, v in jwk.items() if isinstance(v, str)})
    except Exception as exc:  # joserfc raises several types for bad input
        raise malformed("JWK is not a valid public key") from exc
    if not isinstance(key, RSAKey | ECKey | OKPKey) or key.is_private:
        raise AcmeError(type=ProblemType.BAD_PUBLIC_KEY, detail="JWK is not a usable public key")
    return key


def thumbprint(key: JoseKey) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url."""
    return key.thumbprint()


def _check_alg_matches_key(alg: str, key: JoseKey, algorithms: Sequence[str]) -> None:
    if isinstance(key, RSAKey):
        ok = alg == "RS256"
    elif isinstance(key, ECKey):
        ok = _EC_ALG_FOR_CURVE.get(key.curve_name) == alg
    else:
        ok = alg == "EdDSA" and key.curve_name == "Ed25519"
    if not ok:
        raise bad_signature_algorithm(f"JWS algorithm {alg} does not match the key", algorithms)


_HASH_FOR_ALG: dict[str, hashes.HashAlgorithm] = {
    "RS256": hashes.SHA256(),
    "ES256": hashes.SHA256(),
    "ES384": hashes.SHA384(),
    "ES512": hashes.SHA512(),
}
_EC_SIZE_FOR_ALG = {"ES256": 32, "ES384": 48, "ES512": 66}


def verify_signature(
    jws: ParsedJws, key: JoseKey, *, algorithms: Sequence[str] = ALLOWED_ALGORITHMS
) -> None:
    """Raise `malformed` unless the JWS is signed by `key` with its header's `alg`;
    `badSignatureAlgorithm` (listing `algorithms`) for an `alg` that is not among
    `algorithms` or does not match the key.

    The signature is checked with `cryptography` directly (RFC 7518 §3.3, §3.4,
    RFC 8037 §3.1): joserfc's algorithm registry adds a warnings context and a key
    wrapper per call, a third of the cost of the verification itself.
    """
    alg = jws.header.alg
    if alg not in algorithms:
        # Parsed with a wider list than this verification accepts.
        raise bad_signature_algorithm(f"JWS algorithm {alg!r} is not supported", algorithms)
    _check_alg_matches_key(alg, key, algorithms)
    signing_input = f"{jws.protected_b64}.{jws.payload_b64}".encode("ascii")
    public = key.public_key
    signature = jws.signature
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            # RFC 7518 §3.4: R || S, each the curve's size, big-endian.
            size = _EC_SIZE_FOR_ALG[alg]
            if len(signature) != 2 * size:
                raise InvalidSignature
            der = encode_dss_signature(
                int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
            )
            public.verify(der, signing_input, ec.ECDSA(_HASH_FOR_ALG[alg]))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, signing_input, padding.PKCS1v15(), _HASH_FOR_ALG[alg])
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, signing_input)
        else:
            raise InvalidSignature
    except (InvalidSignature, ValueError):
        # A malformed signature may raise ValueError rather than InvalidSignature.
        raise malformed("JWS verification error: signature is invalid") from None


def require_url(jws: ParsedJws, request_url: str) -> None:
    # RFC 8555 §6.4: the `url` header must equal the URL the request was sent to.
    if jws.header.url is None:
        raise unauthorized("JWS protected header is missing 'url'")
    if jws.header.url != request_url:
        raise unauthorized(
            f"JWS 'url' {jws.header.url!r} does not match the request URL {request_url!r}"
        )


def public_key_of(key: JoseKey) -> PublicKeyTypes:
    """The `cryptography` public key behind a JOSE key."""
    public = key.public_key
    if isinstance(public, PublicKeyTypes.__args__):  # type: ignore[attr-defined]
        return public  # type: ignore[no-any-return]
    raise TypeError("not a public key")

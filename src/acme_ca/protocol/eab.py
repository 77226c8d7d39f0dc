"""External Account Binding: parsing and MAC verification (RFC 8555 §7.3.4).

Pure: the caller looks up the HMAC key by `kid` and decides whether the key may
bind an account; this module checks the shape of the binding and its MAC.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from acme_ca.errors import malformed, unauthorized
from acme_ca.protocol.jws import b64url_decode, import_public_jwk, loads_strict, thumbprint

__all__ = ["EAB_ALGORITHMS", "ExternalAccountBinding", "parse_eab", "verify_eab_mac"]

# RFC 8555 §7.3.4: a MAC algorithm; the HMAC family of RFC 7518 §3.2.
EAB_ALGORITHMS: dict[str, Callable[[], Any]] = {
    "HS256": hashlib.sha256,
    "HS384": hashlib.sha384,
    "HS512": hashlib.sha512,
}
_MEMBERS = frozenset({"protected", "payload", "signature"})


@dataclass(frozen=True, slots=True, kw_only=True)
class ExternalAccountBinding:
    """A binding whose shape was checked and whose MAC is not yet verified."""

    kid: str
    alg: str
    protected_b64: str
    payload_b64: str
    mac: bytes


def parse_eab(
    binding: dict[str, Any], *, url: str, account_key_thumbprint: str
) -> ExternalAccountBinding:
    """Check a binding against the newAccount request it came in; `malformed` otherwise.

    RFC 8555 §7.3.4: a flattened JWS with a MAC `alg`, the operator's `kid`, the
    same `url` as the outer JWS, no `nonce`, and the account's public JWK as payload.
    """
    if set(binding) != _MEMBERS or not all(isinstance(binding[m], str) for m in _MEMBERS):
        raise malformed("externalAccountBinding must be a flattened JWS (protected, payload, sig)")
    protected_b64: str = binding["protected"]
    payload_b64: str = binding["payload"]
    header = loads_strict(
        b64url_decode(protected_b64, what="EAB protected header"), what="EAB protected header"
    )
    if not isinstance(header, dict):
        raise malformed("The EAB protected header must be a JSON object")
    alg = header.get("alg")
    if alg not in EAB_ALGORITHMS:
        raise malformed(f"EAB 'alg' must be one of {', '.join(EAB_ALGORITHMS)}, not {alg!r}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise malformed("The EAB protected header must carry the key identifier 'kid'")
    if "nonce" in header:
        raise malformed("The EAB protected header must not carry a 'nonce'")
    if "jwk" in header or "crit" in header:
        raise malformed("The EAB protected header must not carry 'jwk' or 'crit'")
    if header.get("url") != url:
        raise malformed("The EAB 'url' must equal the newAccount URL of the outer JWS")
    payload = loads_strict(b64url_decode(payload_b64, what="EAB payload"), what="EAB payload")
    if not isinstance(payload, dict):
        raise malformed("The EAB payload must be the account's public JWK")
    if thumbprint(import_public_jwk(payload)) != account_key_thumbprint:
        raise malformed("The EAB payload is not the key that signs the newAccount request")
    mac = b64url_decode(binding["signature"], what="EAB signature")
    if not mac:
        raise malformed("The EAB signature is empty")
    return ExternalAccountBinding(
        kid=kid, alg=alg, protected_b64=protected_b64, payload_b64=payload_b64, mac=mac
    )


def verify_eab_mac(binding: ExternalAccountBinding, hmac_key: bytes) -> None:
    """`unauthorized` unless the MAC over protected.payload is right for the key."""
    signing_input = f"{binding.protected_b64}.{binding.payload_b64}".encode("ascii")
    expected = hmac.new(hmac_key, signing_input, EAB_ALGORITHMS[binding.alg]).digest()
    if not hmac.compare_digest(expected, binding.mac):
        raise unauthorized("The external account binding's MAC is not valid for its key")

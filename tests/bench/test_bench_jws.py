"""JWS signing of the benchmark client, checked by an independent verifier (joserfc)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from acme_ca.bench.jws import KeyKind, generate_key, jwk_of, jwk_thumbprint, sign_jws


def _raw(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _decode(part: str) -> Any:
    return json.loads(_raw(part))


def _verifies(signed: dict[str, str], alg: str, key: Any) -> bool:
    # The algorithm layer of joserfc: an independent RFC 7515/7518 implementation.
    signing_input = f"{signed['protected']}.{signed['payload']}".encode("ascii")
    # joserfc warns on the polymorphic "EdDSA"; RFC 9864's "Ed25519" is the same algorithm.
    name = "Ed25519" if alg == "EdDSA" else alg
    algorithm = JWSRegistry(algorithms=[name]).get_alg(name)
    return bool(algorithm.verify(signing_input, _raw(signed["signature"]), key))


@pytest.mark.parametrize(
    ("kind", "alg", "key_cls"),
    [
        (KeyKind.P256, "ES256", ECKey),
        (KeyKind.P384, "ES384", ECKey),
        (KeyKind.RSA2048, "RS256", RSAKey),
        (KeyKind.ED25519, "EdDSA", OKPKey),
    ],
)
def test_signature_verifies_with_the_embedded_jwk(kind: KeyKind, alg: str, key_cls: Any) -> None:
    key = generate_key(kind)
    signed = sign_jws(key, {"hello": "world"}, url="https://ca/new-acct", nonce="n1")
    protected = _decode(signed["protected"])
    assert protected == {
        "alg": alg,
        "url": "https://ca/new-acct",
        "nonce": "n1",
        "jwk": jwk_of(key),
    }
    assert _verifies(signed, alg, key_cls.import_key(protected["jwk"]))
    assert _decode(signed["payload"]) == {"hello": "world"}


def test_tampered_payload_does_not_verify() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signed = sign_jws(key, {"a": 1}, url="u", nonce="n")
    signed["payload"] = base64.urlsafe_b64encode(b'{"a":2}').rstrip(b"=").decode()
    assert not _verifies(signed, "ES256", ECKey.import_key(key.public_key()))


def test_kid_replaces_jwk() -> None:
    # RFC 8555 §6.2: exactly one of "jwk" and "kid".
    signed = sign_jws(generate_key(KeyKind.P256), {}, url="u", nonce="n", kid="https://ca/acct/1")
    protected = _decode(signed["protected"])
    assert protected["kid"] == "https://ca/acct/1"
    assert "jwk" not in protected


def test_post_as_get_has_an_empty_payload() -> None:
    # RFC 8555 §6.3: the payload is the empty string, not "{}" or "null".
    signed = sign_jws(generate_key(KeyKind.P256), None, url="u", nonce="n", kid="k")
    assert signed["payload"] == ""


def test_rfc7638_thumbprint_example() -> None:
    # RFC 7638 §3.1: the example RSA key and its thumbprint.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FD"
        "W2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vM"
        "QFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    e = "AQAB"

    def num(text: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")

    public = rsa.RSAPublicNumbers(num(e), num(n)).public_key()
    assert jwk_of(public) == {"e": e, "kty": "RSA", "n": n}
    assert jwk_thumbprint(public) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"

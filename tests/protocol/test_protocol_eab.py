"""External Account Binding parsing and MAC verification (RFC 8555 §7.3.4), pure."""

from __future__ import annotations

import pytest

from acme_ca.bench.jws import generate_key, jwk_of, jwk_thumbprint
from acme_ca.errors import AcmeError, ProblemType
from acme_ca.protocol.eab import parse_eab, verify_eab_mac
from tests.policy_helpers import NEW_ACCOUNT, eab_binding

KEY = generate_key("p256")
THUMB = jwk_thumbprint(KEY)
HMAC = b"0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_valid_binding_parses_and_verifies(alg: str) -> None:
    binding = parse_eab(
        eab_binding(KEY, "kid-1", HMAC, alg=alg), url=NEW_ACCOUNT, account_key_thumbprint=THUMB
    )
    assert binding.kid == "kid-1"
    assert binding.alg == alg
    verify_eab_mac(binding, HMAC)


def test_wrong_key_is_unauthorized() -> None:
    binding = parse_eab(
        eab_binding(KEY, "kid-1", HMAC), url=NEW_ACCOUNT, account_key_thumbprint=THUMB
    )
    with pytest.raises(AcmeError) as info:
        verify_eab_mac(binding, b"another key")
    assert info.value.type == ProblemType.UNAUTHORIZED


def test_tampered_payload_fails_the_mac() -> None:
    good = eab_binding(KEY, "kid-1", HMAC)
    other = eab_binding(KEY, "kid-2", HMAC)
    mixed = {**good, "protected": other["protected"]}
    binding = parse_eab(mixed, url=NEW_ACCOUNT, account_key_thumbprint=THUMB)
    with pytest.raises(AcmeError) as info:
        verify_eab_mac(binding, HMAC)
    assert info.value.type == ProblemType.UNAUTHORIZED


@pytest.mark.parametrize(
    ("binding", "message"),
    [
        ({"protected": "e30", "payload": "e30"}, "flattened JWS"),
        ({"protected": "e30", "payload": "e30", "signature": "AA", "x": "1"}, "flattened JWS"),
        ({"protected": 1, "payload": "e30", "signature": "AA"}, "flattened JWS"),
        (eab_binding(KEY, "k", HMAC, alg="none"), "alg"),
        (eab_binding(KEY, "k", HMAC, alg="ES256"), "alg"),
        (eab_binding(KEY, "", HMAC), "kid"),
        (eab_binding(KEY, "k", HMAC, header={"nonce": "n"}), "nonce"),
        (eab_binding(KEY, "k", HMAC, header={"jwk": jwk_of(KEY)}), "jwk"),
        (eab_binding(KEY, "k", HMAC, url="https://elsewhere.test/new-account"), "url"),
        (eab_binding(KEY, "k", HMAC, payload_jwk=jwk_of(generate_key("p256"))), "payload"),
        ({**eab_binding(KEY, "k", HMAC), "signature": ""}, "empty"),
        ({**eab_binding(KEY, "k", HMAC), "protected": "!!"}, "base64url"),
    ],
)
def test_malformed_bindings(binding: dict[str, object], message: str) -> None:
    with pytest.raises(AcmeError) as info:
        parse_eab(binding, url=NEW_ACCOUNT, account_key_thumbprint=THUMB)
    assert info.value.type == ProblemType.MALFORMED
    assert message in info.value.detail

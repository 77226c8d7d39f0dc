"""Flattened JWS parsing and verification, rule by rule (RFC 8555 §6.2, RFC 7515, RFC 7638)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from acme_ca.bench.jws import PrivateKey, _sign, b64url, generate_key, jwk_of, jws_alg
from acme_ca.errors import AcmeError, ProblemType
from acme_ca.protocol.jws import (
    ALLOWED_ALGORITHMS,
    ParsedJws,
    b64url_decode,
    b64url_encode,
    import_public_jwk,
    loads_strict,
    parse_flattened,
    require_url,
    thumbprint,
    verify_signature,
)

URL = "https://acme.test/acme/new-account"


def signed(
    key: PrivateKey, header: dict[str, Any] | None = None, payload: bytes | None = b"{}"
) -> dict[str, str]:
    protected = {"alg": jws_alg(key), "jwk": jwk_of(key), "nonce": "n", "url": URL}
    protected.update(header or {})
    protected = {k: v for k, v in protected.items() if v is not None}
    protected_b64 = b64url(json.dumps(protected).encode())
    payload_b64 = "" if payload is None else b64url(payload)
    sig = _sign(key, f"{protected_b64}.{payload_b64}".encode())
    return {"protected": protected_b64, "payload": payload_b64, "signature": b64url(sig)}


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def problem(kind: ProblemType, data: bytes) -> AcmeError:
    with pytest.raises(AcmeError) as info:
        parse_flattened(data)
    assert info.value.type == kind, info.value
    return info.value


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    return generate_key("p256")


# --- base64url (RFC 7515 §2) -------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xff\xfe", b"abc", bytes(range(256))])
def test_b64url_round_trip(data: bytes) -> None:
    encoded = b64url_encode(data)
    assert "=" not in encoded
    assert b64url_decode(encoded, what="x") == data


@pytest.mark.parametrize(
    "value",
    ["YQ==", "YQ=", "a+b/", "YW Jj", "YW\nJj", "Y", "YWJjZ", "é", "YWJj\x00"],
    ids=[
        "padding",
        "one-pad",
        "std-alphabet",
        "space",
        "newline",
        "len1",
        "len5",
        "non-ascii",
        "nul",
    ],
)
def test_b64url_decode_is_strict(value: str) -> None:
    with pytest.raises(AcmeError) as info:
        b64url_decode(value, what="thing")
    assert info.value.type == ProblemType.MALFORMED
    assert "thing" in info.value.detail


def test_b64url_decode_refuses_non_strings() -> None:
    with pytest.raises(AcmeError):
        b64url_decode(123, what="x")  # type: ignore[arg-type]


@given(st.binary(max_size=200))
def test_b64url_round_trips_any_bytes(data: bytes) -> None:
    assert b64url_decode(b64url_encode(data), what="x") == data


# --- strict JSON (RFC 8259, RFC 7515 §5.2) -----------------------------------


def test_loads_strict_accepts_plain_json() -> None:
    assert loads_strict(b'{"a": [1, 2.5, "x", null, true]}', what="x") == {
        "a": [1, 2.5, "x", None, True]
    }


@pytest.mark.parametrize(
    "data",
    [b'{"a": "x\\u0000"}', b'{"a": ["\\ud800"]}', b'{"\\udfff": 1}', b'[{"b": "\\udc00x"}]'],
    ids=["nul", "lone-high-in-list", "lone-low-key", "nested"],
)
def test_nul_and_lone_surrogates_are_refused(data: bytes) -> None:
    # RFC 7493 §2.1; PostgreSQL text cannot hold NUL, no driver encodes a lone surrogate.
    with pytest.raises(AcmeError) as info:
        loads_strict(data, what="x")
    assert info.value.type == ProblemType.MALFORMED
    assert "surrogate" in info.value.detail


def test_escaped_surrogate_pairs_and_other_escapes_are_text() -> None:
    assert loads_strict(b'{"a": "\\ud83d\\ude00 \\u00e9\\n"}', what="x") == {
        "a": "\U0001f600 \u00e9\n"
    }


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": 1, "a": 2}',
        b'{"outer": {"b": 1, "b": 1}}',
        b'[{"c": 1, "c": 2}]',
    ],
    ids=["top", "nested", "in-array"],
)
def test_duplicate_members_are_refused(data: bytes) -> None:
    with pytest.raises(AcmeError) as info:
        loads_strict(data, what="x")
    assert "Duplicate" in info.value.detail


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"a": "\xff"}',
        '{"a": 1}'.encode("utf-16"),
        '{"a": 1}'.encode("utf-32"),
        b"\xef\xbb\xbf{}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a": ' + b"9" * 10_000 + b"}",
        b"",
        b"{",
    ],
    ids=[
        "nan",
        "inf",
        "-inf",
        "bad-utf8",
        "utf16",
        "utf32",
        "bom",
        "nesting-bomb",
        "huge-int",
        "empty",
        "truncated",
    ],
)
def test_non_json_is_malformed(data: bytes) -> None:
    with pytest.raises(AcmeError) as info:
        loads_strict(data, what="thing")
    assert info.value.type == ProblemType.MALFORMED


# --- flattened serialization (RFC 8555 §6.2) ---------------------------------


def test_valid_flattened_jws_parses(key: PrivateKey) -> None:
    jws = parse_flattened(body(signed(key)))
    assert jws.header.alg == "ES256"
    assert jws.header.url == URL
    assert jws.header.nonce == "n"
    assert jws.header.jwk == jwk_of(key)
    assert jws.header.kid is None
    assert jws.payload_json() == {}
    assert not jws.is_post_as_get


def test_compact_serialization_is_refused(key: PrivateKey) -> None:
    jws = signed(key)
    compact = f"{jws['protected']}.{jws['payload']}.{jws['signature']}"
    problem(ProblemType.MALFORMED, compact.encode())
    problem(ProblemType.MALFORMED, body(compact))


def test_general_serialization_is_refused(key: PrivateKey) -> None:
    jws = signed(key)
    general = {
        "payload": jws["payload"],
        "signatures": [{"protected": jws["protected"], "signature": jws["signature"]}],
    }
    assert "General" in problem(ProblemType.MALFORMED, body(general)).detail


def test_unprotected_header_is_refused(key: PrivateKey) -> None:
    jws = {**signed(key), "header": {"kid": "x"}}
    assert "unprotected" in problem(ProblemType.MALFORMED, body(jws)).detail


@pytest.mark.parametrize("member", ["protected", "payload", "signature"])
def test_missing_member_is_refused(key: PrivateKey, member: str) -> None:
    jws = signed(key)
    del jws[member]
    assert member in problem(ProblemType.MALFORMED, body(jws)).detail


def test_unexpected_member_is_refused(key: PrivateKey) -> None:
    problem(ProblemType.MALFORMED, body({**signed(key), "extra": "x"}))


@pytest.mark.parametrize("member", ["protected", "payload", "signature"])
@pytest.mark.parametrize("value", [1, None, [], {}, True])
def test_member_of_wrong_type_is_refused(key: PrivateKey, member: str, value: Any) -> None:
    problem(ProblemType.MALFORMED, body({**signed(key), member: value}))


@pytest.mark.parametrize("value", [[], "x", 1, None])
def test_body_that_is_not_an_object_is_refused(value: Any) -> None:
    problem(ProblemType.MALFORMED, body(value))


def test_duplicate_member_in_body_is_refused(key: PrivateKey) -> None:
    text = json.dumps(signed(key))[:-1] + ', "payload": ""}'
    problem(ProblemType.MALFORMED, text.encode())


def test_duplicate_member_in_protected_header_is_refused(key: PrivateKey) -> None:
    jws = signed(key)
    header = json.loads(b64url_decode(jws["protected"], what="x"))
    text = json.dumps(header)[:-1] + f', "url": "{URL}x"}}'
    jws["protected"] = b64url(text.encode())
    assert "Duplicate" in problem(ProblemType.MALFORMED, body(jws)).detail


@pytest.mark.parametrize("protected", ["!!!", b64url(b"[]"), b64url(b"not json"), ""])
def test_protected_header_must_be_b64url_json_object(key: PrivateKey, protected: str) -> None:
    problem(ProblemType.MALFORMED, body({**signed(key), "protected": protected}))


def test_empty_signature_is_refused(key: PrivateKey) -> None:
    problem(ProblemType.MALFORMED, body({**signed(key), "signature": ""}))


def test_payload_must_be_b64url(key: PrivateKey) -> None:
    problem(ProblemType.MALFORMED, body({**signed(key), "payload": "e30="}))


def test_empty_payload_is_post_as_get(key: PrivateKey) -> None:
    jws = parse_flattened(body(signed(key, payload=None)))
    assert jws.is_post_as_get
    with pytest.raises(AcmeError) as info:
        jws.payload_json()
    assert info.value.type == ProblemType.MALFORMED


@pytest.mark.parametrize("payload", [b"[]", b'"x"', b"1", b"null", b"", b"{", b'{"a":1,"a":1}'])
def test_payload_json_must_be_an_object(key: PrivateKey, payload: bytes) -> None:
    jws = parse_flattened(body(signed(key, payload=payload)))
    if payload == b"":
        assert jws.is_post_as_get
    with pytest.raises(AcmeError) as info:
        jws.payload_json()
    assert info.value.type == ProblemType.MALFORMED


# --- protected header rules --------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "HS256", "HS512", "RS512", "PS256", "ES256K", "", 256])
def test_alg_outside_allowlist_is_bad_signature_algorithm(key: PrivateKey, alg: object) -> None:
    error = problem(ProblemType.BAD_SIGNATURE_ALGORITHM, body(signed(key, {"alg": alg})))
    # RFC 8555 §6.2: the problem lists the accepted algorithms.
    assert error.extra["algorithms"] == list(ALLOWED_ALGORITHMS)


def test_missing_alg_is_bad_signature_algorithm(key: PrivateKey) -> None:
    problem(ProblemType.BAD_SIGNATURE_ALGORITHM, body(signed(key, {"alg": None})))


# What a server whose key policy refuses P-521 and Ed25519 keys accepts.
NARROW = ("RS256", "ES256", "ES384")


def _p521() -> PrivateKey:
    return ec.generate_private_key(ec.SECP521R1())


@pytest.mark.parametrize("kind", ["p521", "ed25519"])
def test_alg_outside_given_algorithms_lists_only_them(kind: str) -> None:
    data = body(signed(_p521() if kind == "p521" else generate_key(kind)))
    parse_flattened(data)  # ES512 and EdDSA are among the default algorithms
    with pytest.raises(AcmeError) as info:
        parse_flattened(data, algorithms=NARROW)
    assert info.value.type == ProblemType.BAD_SIGNATURE_ALGORITHM
    # RFC 8555 §6.2: the list a client can follow, not every algorithm we could verify.
    assert info.value.extra["algorithms"] == list(NARROW)
    assert info.value.detail.endswith("accepted: RS256, ES256, ES384")


@pytest.mark.parametrize("kind", ["p256", "p384", "rsa2048"])
def test_alg_inside_given_algorithms_parses_and_verifies(kind: str) -> None:
    private = generate_key(kind)
    jws = parse_flattened(body(signed(private)), algorithms=NARROW)
    verify_signature(jws, import_public_jwk(jwk_of(private)), algorithms=NARROW)


def test_given_algorithm_that_is_not_verifiable_is_still_refused(key: PrivateKey) -> None:
    # The allowlist bounds what a caller's list can add: never `none` or a MAC.
    for alg in ("none", "HS256"):
        with pytest.raises(AcmeError) as info:
            parse_flattened(body(signed(key, {"alg": alg})), algorithms=(*NARROW, alg))
        assert info.value.type == ProblemType.BAD_SIGNATURE_ALGORITHM


@pytest.mark.parametrize("extra", [{"b64": False}, {"b64": True}, {"crit": ["b64"]}, {"crit": []}])
def test_b64_and_crit_are_refused(key: PrivateKey, extra: dict[str, Any]) -> None:
    problem(ProblemType.MALFORMED, body(signed(key, extra)))


def test_jwk_and_kid_together_are_refused(key: PrivateKey) -> None:
    assert "exactly one" in problem(ProblemType.MALFORMED, body(signed(key, {"kid": "k"}))).detail


def test_neither_jwk_nor_kid_is_refused(key: PrivateKey) -> None:
    problem(ProblemType.MALFORMED, body(signed(key, {"jwk": None})))


def test_kid_alone_is_accepted(key: PrivateKey) -> None:
    jws = parse_flattened(body(signed(key, {"jwk": None, "kid": "https://acme.test/acct/1"})))
    assert jws.header.kid == "https://acme.test/acct/1"
    assert jws.header.jwk is None


@pytest.mark.parametrize("jwk", ["x", [], 1])
def test_jwk_must_be_an_object(key: PrivateKey, jwk: object) -> None:
    problem(ProblemType.MALFORMED, body(signed(key, {"jwk": jwk})))


@pytest.mark.parametrize("kid", ["", 1, [], {}])
def test_kid_must_be_a_non_empty_string(key: PrivateKey, kid: object) -> None:
    problem(ProblemType.MALFORMED, body(signed(key, {"jwk": None, "kid": kid})))


@pytest.mark.parametrize("nonce", [1, [], {}, True])
def test_nonce_of_wrong_type_is_bad_nonce(key: PrivateKey, nonce: object) -> None:
    problem(ProblemType.BAD_NONCE, body(signed(key, {"nonce": nonce})))


@pytest.mark.parametrize("url", [1, [], {}])
def test_url_of_wrong_type_is_malformed(key: PrivateKey, url: object) -> None:
    problem(ProblemType.MALFORMED, body(signed(key, {"url": url})))


def test_missing_nonce_and_url_parse_for_later_checks(key: PrivateKey) -> None:
    # The gate refuses these (badNonce, unauthorized); the parser only records them.
    jws = parse_flattened(body(signed(key, {"nonce": None, "url": None})))
    assert jws.header.nonce is None
    assert jws.header.url is None


# --- url (RFC 8555 §6.4) -----------------------------------------------------


def test_require_url(key: PrivateKey) -> None:
    require_url(parse_flattened(body(signed(key))), URL)
    for header, request_url in (({"url": None}, URL), ({}, URL + "/"), ({}, URL.upper())):
        with pytest.raises(AcmeError) as info:
            require_url(parse_flattened(body(signed(key, header))), request_url)
        assert info.value.type == ProblemType.UNAUTHORIZED


# --- keys (RFC 7517, RFC 7638) -----------------------------------------------


@pytest.mark.parametrize("kind", ["p256", "p384", "rsa2048", "ed25519"])
def test_public_jwk_imports(kind: str) -> None:
    key = generate_key(kind)
    assert not import_public_jwk(jwk_of(key)).is_private


@pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi", "k"])
def test_private_members_are_bad_public_key(member: str) -> None:
    with pytest.raises(AcmeError) as info:
        import_public_jwk({**jwk_of(generate_key("p256")), member: "AQAB"})
    assert info.value.type == ProblemType.BAD_PUBLIC_KEY


def test_jwk_without_kty_says_so() -> None:
    # RFC 7517 §4.1: "kty" is required; the detail named Python's None.
    for jwk in ({}, {"n": "AQAB", "e": "AQAB"}):
        with pytest.raises(AcmeError) as info:
            import_public_jwk(jwk)
        assert info.value.type is ProblemType.BAD_PUBLIC_KEY
        assert info.value.detail == 'JWK has no "kty" member'


@pytest.mark.parametrize("kty", ["oct", "", None, "rsa"])
def test_unknown_key_types_are_bad_public_key(kty: object) -> None:
    with pytest.raises(AcmeError) as info:
        import_public_jwk({"kty": kty, "k": "AQAB"} if kty == "oct" else {"kty": kty})
    assert info.value.type == ProblemType.BAD_PUBLIC_KEY


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},  # not on the curve
        {"kty": "EC", "crv": "P-192", "x": "AA", "y": "AA"},
        {"kty": "RSA", "n": "AA"},
        {"kty": "OKP", "crv": "Ed25519", "x": "!!"},
    ],
)
def test_broken_public_keys_are_malformed(jwk: dict[str, Any]) -> None:
    with pytest.raises(AcmeError) as info:
        import_public_jwk(jwk)
    assert info.value.type in (ProblemType.MALFORMED, ProblemType.BAD_PUBLIC_KEY)


def test_rfc7638_thumbprint_example() -> None:
    # RFC 7638 §3.1.
    jwk = {
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1"
            "L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4"
            "QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbO"
            "pbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csF"
            "Cur-kEgU8awapJzKnqDKgw"
        ),
        "e": "AQAB",
    }
    assert thumbprint(import_public_jwk(jwk)) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


# --- signatures --------------------------------------------------------------


def _parse_and_key(private: PrivateKey, **kwargs: Any) -> tuple[ParsedJws, Any]:
    jws = parse_flattened(body(signed(private, **kwargs)))
    return jws, import_public_jwk(jwk_of(private))


@pytest.mark.parametrize("kind", ["p256", "p384", "rsa2048", "ed25519"])
def test_valid_signature_verifies(kind: str) -> None:
    jws, public = _parse_and_key(generate_key(kind))
    verify_signature(jws, public)


def test_valid_p521_signature_verifies() -> None:
    jws, public = _parse_and_key(_p521())
    assert jws.header.alg == "ES512"
    verify_signature(jws, public)


def test_verification_refuses_an_alg_outside_its_algorithms() -> None:
    # Parsed with the wider default list, verified with a narrower one.
    jws, public = _parse_and_key(generate_key("p384"))
    verify_signature(jws, public, algorithms=NARROW)
    with pytest.raises(AcmeError) as info:
        verify_signature(jws, public, algorithms=("RS256", "ES256"))
    assert info.value.type == ProblemType.BAD_SIGNATURE_ALGORITHM
    assert info.value.extra["algorithms"] == ["RS256", "ES256"]


def test_alg_not_matching_key_lists_the_given_algorithms() -> None:
    jws, public = _parse_and_key(generate_key("p256"), header={"alg": "ES384"})
    with pytest.raises(AcmeError) as info:
        verify_signature(jws, public, algorithms=NARROW)
    assert info.value.type == ProblemType.BAD_SIGNATURE_ALGORITHM
    assert info.value.extra["algorithms"] == list(NARROW)


@pytest.mark.parametrize(
    ("kind", "alg"),
    [("p256", "ES384"), ("p256", "RS256"), ("p384", "ES256"), ("rsa2048", "ES256"),
     ("ed25519", "ES256"), ("p256", "EdDSA"), ("rsa2048", "EdDSA")],
)  # fmt: skip
def test_alg_not_matching_key_is_bad_signature_algorithm(kind: str, alg: str) -> None:
    jws, public = _parse_and_key(generate_key(kind), header={"alg": alg})
    with pytest.raises(AcmeError) as info:
        verify_signature(jws, public)
    assert info.value.type == ProblemType.BAD_SIGNATURE_ALGORITHM


def test_signature_by_other_key_is_refused(key: PrivateKey) -> None:
    jws = parse_flattened(body(signed(key)))
    with pytest.raises(AcmeError) as info:
        verify_signature(jws, import_public_jwk(jwk_of(generate_key("p256"))))
    assert info.value.type == ProblemType.MALFORMED


@pytest.mark.parametrize("part", ["protected", "payload", "signature"])
def test_tampered_jws_is_refused(key: PrivateKey, part: str) -> None:
    jws = signed(key)
    raw = bytearray(b64url_decode(jws[part], what="x"))
    raw[len(raw) // 2] ^= 0x01
    jws[part] = b64url(bytes(raw))
    try:
        parsed = parse_flattened(body(jws))
    except AcmeError:
        return  # a flipped header byte may already break its JSON
    with pytest.raises(AcmeError) as info:
        verify_signature(parsed, import_public_jwk(jwk_of(key)))
    assert info.value.type == ProblemType.MALFORMED


@pytest.mark.parametrize("signature", [b"\x00", b"\x00" * 64, b"\xff" * 63, b"\x01" * 1000])
def test_garbage_signature_is_refused(key: PrivateKey, signature: bytes) -> None:
    jws = {**signed(key), "signature": b64url(signature)}
    with pytest.raises(AcmeError) as info:
        verify_signature(parse_flattened(body(jws)), import_public_jwk(jwk_of(key)))
    assert info.value.type == ProblemType.MALFORMED


# --- no input escapes as anything but AcmeError ------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.binary(max_size=300) | _json.map(lambda v: json.dumps(v).encode()))
def test_parse_flattened_raises_only_acme_errors(data: bytes) -> None:
    with contextlib.suppress(AcmeError):
        parse_flattened(data)


@given(
    header=st.dictionaries(
        st.sampled_from(["alg", "jwk", "kid", "nonce", "url", "crit", "b64", "x"]), _json
    ),
    payload=st.binary(max_size=40),
)
def test_any_protected_header_parses_or_is_an_acme_error(
    header: dict[str, Any], payload: bytes
) -> None:
    data = body(
        {
            "protected": b64url(json.dumps(header).encode()),
            "payload": b64url(payload),
            "signature": "AA",
        }
    )
    try:
        jws = parse_flattened(data)
    except AcmeError:
        return
    assert jws.header.alg in ALLOWED_ALGORITHMS
    assert (jws.header.jwk is None) != (jws.header.kid is None)
    if jws.header.jwk is not None:
        with contextlib.suppress(AcmeError):
            import_public_jwk(jws.header.jwk)

"""Key policy (Boulder goodkey): one test per rule, accepted and refused."""

from __future__ import annotations

import functools
import hashlib
import math
import secrets

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from acme_ca.errors import AcmeError, ProblemType
from acme_ca.policy import keys
from acme_ca.policy.keys import KeyPolicy, check_public_key, spki_sha256
from acme_ca.protocol.jws import ALLOWED_ALGORITHMS

POLICY = KeyPolicy()


@functools.cache
def rsa_key(bits: int = 2048) -> rsa.RSAPublicKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()


def _is_probable_prime(n: int, rounds: int = 8) -> bool:
    if n < 2:
        return False
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29):
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(rounds):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _next_prime(n: int) -> int:
    n |= 1
    while not _is_probable_prime(n):
        n += 2
    return n


def _random_odd(bits: int) -> int:
    return secrets.randbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1


def _public(n: int, e: int = 65537) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(e, n).public_key()


def _refused(key: PublicKeyTypes, policy: KeyPolicy = POLICY) -> str:
    with pytest.raises(AcmeError) as info:
        check_public_key(key, policy)
    assert info.value.type is ProblemType.BAD_PUBLIC_KEY
    return info.value.detail


def test_rsa_2048_and_ec_p256_p384_accepted() -> None:
    check_public_key(rsa_key(), POLICY)
    check_public_key(ec.generate_private_key(ec.SECP256R1()).public_key(), POLICY)
    check_public_key(ec.generate_private_key(ec.SECP384R1()).public_key(), POLICY)


def test_rsa_exponent_must_be_65537() -> None:
    key = _public(rsa_key().public_numbers().n, e=3)
    assert "exponent 3" in _refused(key)


def test_rsa_1024_too_small() -> None:
    assert "1024 bits is too small" in _refused(rsa_key(1024))


def test_rsa_min_bits_is_configurable() -> None:
    assert "too small (minimum 3072)" in _refused(rsa_key(), KeyPolicy(rsa_min_bits=3072))


def test_rsa_8192_too_large() -> None:
    assert "8192 bits is too large" in _refused(_public(_random_odd(8192)))


def test_rsa_size_must_be_multiple_of_8() -> None:
    assert "not a multiple of 8" in _refused(_public(_random_odd(2052)))


def test_rsa_small_prime_factor() -> None:
    n = 997 * _random_odd(2038)
    assert n.bit_length() == 2048
    assert "small prime" in _refused(_public(n))


def test_roca_masks_match_published_fingerprints() -> None:
    # The first and last `prints` of crocs-muni/roca detect.py.
    masks = dict(keys._ROCA_MASKS)
    assert [masks[p] for p in (3, 5, 7, 11, 13, 17, 19, 23)] == [
        6,
        30,
        126,
        1026,
        5658,
        107286,
        199410,
        8388606,
    ]
    assert masks[167] == 187072209578355573530071658587684226515959365500926


def _roca_prime(bits: int) -> int:
    """A prime k*M + (65537^a mod M) (Infineon's weak form), at least sqrt(2) * 2^(bits-1)."""
    m = math.prod(keys._ROCA_PRIMES)
    low, high = math.isqrt(1 << (2 * bits - 1)) // m + 1, (1 << bits) // m - 1
    while True:
        candidate = (low + secrets.randbelow(high - low)) * m + pow(65537, secrets.randbits(64), m)
        if candidate % 2 == 0:
            candidate += m  # m is odd: flips the parity, keeps the residues mod M
        if candidate.bit_length() == bits and _is_probable_prime(candidate):
            return candidate


def test_rsa_roca_fingerprint_refused() -> None:
    n = _roca_prime(1024) * _roca_prime(1024)
    assert n.bit_length() == 2048
    assert "ROCA" in _refused(_public(n))


def test_rsa_close_primes_factored_by_fermat() -> None:
    p = _next_prime(_random_odd(1024))
    q = _next_prime(p + 2)
    detail = _refused(_public(p * q))
    assert "Fermat" in detail


def test_fermat_rounds_bound_the_search() -> None:
    # Primes about 20 * 2^512 apart need some tens of rounds: found only within budget.
    p = _next_prime(_random_odd(1024))
    q = _next_prime(p + 20 * (1 << 512))
    rounds = keys._fermat_rounds_to_factor(p * q, 10_000)
    assert rounds is not None
    assert rounds > 2
    assert keys._fermat_rounds_to_factor(p * q, rounds - 1) is None
    far = _next_prime(_random_odd(1024)) * _next_prime(_random_odd(1024))
    assert keys._fermat_rounds_to_factor(far, 100) is None


def test_p521_refused_unless_allowed() -> None:
    key = ec.generate_private_key(ec.SECP521R1()).public_key()
    assert "P-521" in _refused(key)
    check_public_key(key, KeyPolicy(allow_p521=True))


def test_other_curves_refused() -> None:
    for curve in (ec.SECP256K1(), ec.SECP224R1()):
        key = ec.generate_private_key(curve).public_key()
        assert curve.name in _refused(key, KeyPolicy(allow_p521=True))


def test_ed25519_refused_unless_allowed() -> None:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    assert "Ed25519" in _refused(key)
    check_public_key(key, KeyPolicy(allow_ed25519=True))


def test_jws_algorithms_follow_the_allowed_keys() -> None:
    # RFC 8555 §6.2: what badSignatureAlgorithm lists is what an account key can use.
    assert POLICY.jws_algorithms == ("RS256", "ES256", "ES384")
    assert KeyPolicy(allow_p521=True).jws_algorithms == ("RS256", "ES256", "ES384", "ES512")
    assert KeyPolicy(allow_ed25519=True).jws_algorithms == ("RS256", "ES256", "ES384", "EdDSA")
    allow_all = KeyPolicy(allow_p521=True, allow_ed25519=True)
    assert allow_all.jws_algorithms == ALLOWED_ALGORITHMS


def test_dsa_x25519_ed448_refused() -> None:
    allow_all = KeyPolicy(allow_p521=True, allow_ed25519=True)
    assert "DSA" in _refused(dsa.generate_private_key(1024).public_key(), allow_all)
    assert "X25519" in _refused(x25519.X25519PrivateKey.generate().public_key(), allow_all)
    assert "Ed448" in _refused(ed448.Ed448PrivateKey.generate().public_key(), allow_all)


def test_blocked_key_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    policy = KeyPolicy(blocked_spki_sha256=frozenset({spki_sha256(key)}))
    assert "blocked" in _refused(key, policy)
    check_public_key(ec.generate_private_key(ec.SECP256R1()).public_key(), policy)
    assert "blocked" in _refused(
        rsa_key(), KeyPolicy(blocked_spki_sha256=frozenset({spki_sha256(rsa_key())}))
    )


def test_spki_sha256_is_hex_digest_of_der_spki() -> None:
    key = rsa_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert spki_sha256(key) == hashlib.sha256(der).hexdigest()


def test_cached_result_still_honours_policy_size_limits() -> None:
    key = rsa_key()
    check_public_key(key, POLICY)  # now cached by modulus
    assert "too small" in _refused(key, KeyPolicy(rsa_min_bits=4096))

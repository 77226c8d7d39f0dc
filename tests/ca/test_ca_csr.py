"""Finalize CSR checks (RFC 8555 §7.4): each rule accepted and refused."""

from __future__ import annotations

import functools
import ipaddress
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from acme_ca.ca import check_csr, load_csr
from acme_ca.errors import AcmeError, Identifier, ProblemType
from acme_ca.policy.keys import KeyPolicy, spki_sha256

POLICY = KeyPolicy()
CsrKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@functools.cache
def account_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def cert_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


ACCOUNT = spki_sha256(account_key().public_key())


def dns(*names: str) -> list[Identifier]:
    return [Identifier(type="dns", value=n) for n in names]


def ip(*addresses: str) -> list[Identifier]:
    return [Identifier(type="ip", value=a) for a in addresses]


def make_csr(
    sans: Sequence[x509.GeneralName] | None,
    *,
    cn: str | None = None,
    key: CsrKey | None = None,
) -> bytes:
    key = key or cert_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)


def san_dns(*names: str) -> list[x509.GeneralName]:
    return [x509.DNSName(n) for n in names]


def check(
    der: bytes,
    identifiers: Sequence[Identifier],
    policy: KeyPolicy = POLICY,
) -> x509.CertificateSigningRequest:
    return check_csr(der, identifiers=identifiers, account_spki_sha256=ACCOUNT, key_policy=policy)


def refused(
    der: bytes,
    identifiers: Sequence[Identifier],
    kind: ProblemType = ProblemType.BAD_CSR,
    policy: KeyPolicy = POLICY,
) -> str:
    with pytest.raises(AcmeError) as info:
        check(der, identifiers, policy)
    assert info.value.type is kind, info.value.detail
    return info.value.detail


def test_valid_csr_is_returned_parsed() -> None:
    der = make_csr(san_dns("a.example", "b.example"), cn="a.example")
    csr = check(der, dns("a.example", "b.example"))
    assert csr.public_bytes(serialization.Encoding.DER) == der


def test_not_der_is_bad_csr() -> None:
    assert "DER" in refused(b"\x30\x03\x02\x01\x00", dns("a.example"))
    assert "DER" in refused(b"not a csr", dns("a.example"))


def test_invalid_signature_is_bad_csr() -> None:
    der = bytearray(make_csr(san_dns("a.example"), key=rsa_key()))
    der[-1] ^= 0x01  # the last byte of an RSA signature
    assert refused(bytes(der), dns("a.example")) == "CSR signature is invalid"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to sign with SHA-1")
@pytest.mark.parametrize("digest", ["sha1", "md5"])
def test_weak_signature_hash_is_bad_csr(tmp_path: Path, digest: str) -> None:
    # cryptography refuses to sign with these, so the CSR is made by the openssl command.
    key_path = tmp_path / "key.pem"
    key_path.write_bytes(
        rsa_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    der = subprocess.run(
        [
            *("openssl", "req", "-new", f"-{digest}", "-key", str(key_path)),
            *("-subj", "/CN=a.example", "-addext", "subjectAltName=DNS:a.example"),
            *("-outform", "DER"),
        ],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    assert f"uses {digest.upper()}" in refused(der, dns("a.example"))


def test_weak_key_is_bad_public_key_naming_the_csr() -> None:
    der = make_csr(san_dns("a.example"), key=rsa_key(1024))
    detail = refused(der, dns("a.example"), kind=ProblemType.BAD_PUBLIC_KEY)
    assert detail.startswith("CSR public key is unacceptable: ")
    assert "1024 bits is too small" in detail


def test_rsa_2048_key_accepted() -> None:
    check(make_csr(san_dns("a.example"), key=rsa_key()), dns("a.example"))


def test_ed25519_key_follows_policy() -> None:
    der = make_csr(san_dns("a.example"), key=ed25519.Ed25519PrivateKey.generate())
    assert "Ed25519" in refused(der, dns("a.example"), kind=ProblemType.BAD_PUBLIC_KEY)
    check(der, dns("a.example"), KeyPolicy(allow_ed25519=True))


def test_blocked_key_is_bad_public_key() -> None:
    policy = KeyPolicy(blocked_spki_sha256=frozenset({spki_sha256(cert_key().public_key())}))
    der = make_csr(san_dns("a.example"))
    detail = refused(der, dns("a.example"), kind=ProblemType.BAD_PUBLIC_KEY, policy=policy)
    assert "blocked" in detail


def test_account_key_is_bad_csr() -> None:
    der = make_csr(san_dns("a.example"), key=account_key())
    assert "same as the account key" in refused(der, dns("a.example"))


def test_missing_name_is_named() -> None:
    der = make_csr(san_dns("a.example"))
    detail = refused(der, dns("a.example", "b.example"))
    assert detail == (
        "CSR names do not match the order: CSR is missing the order's identifiers dns:b.example"
    )


def test_extra_name_is_named() -> None:
    der = make_csr(san_dns("a.example", "evil.example"))
    detail = refused(der, dns("a.example"))
    assert detail == (
        "CSR names do not match the order: CSR has names not in the order dns:evil.example"
    )


def test_missing_and_extra_both_named() -> None:
    der = make_csr(san_dns("a.example", "c.example"))
    detail = refused(der, dns("a.example", "b.example"))
    assert detail == (
        "CSR names do not match the order: CSR is missing the order's identifiers "
        "dns:b.example and has names not in the order dns:c.example"
    )


def test_names_compare_case_insensitively() -> None:
    check(make_csr(san_dns("A.Example")), dns("a.example"))
    check(make_csr(san_dns("a.example")), dns("A.EXAMPLE"))


def test_ip_sans_match_ip_identifiers() -> None:
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("192.0.2.1")),
        x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
    ]
    der = make_csr(sans)
    check(der, ip("192.0.2.1", "2001:0db8:0:0::1"))
    assert "ip:192.0.2.2" in refused(der, ip("192.0.2.2", "2001:db8::1"))
    # An IP SAN does not stand for a dns identifier spelled like it.
    assert "dns:192.0.2.1" in refused(der, dns("192.0.2.1") + ip("2001:db8::1"))


def test_common_name_counts_as_one_more_name() -> None:
    check(make_csr(san_dns("a.example"), cn="A.example"), dns("a.example"))
    # A CN outside the SANs is a name too (Boulder's NamesFromCSR): in the order, fine;
    der = make_csr(san_dns("a.example"), cn="b.example")
    check(der, dns("a.example", "b.example"))
    # not in the order, a name the order does not have.
    assert "has names not in the order dns:b.example" in refused(der, dns("a.example"))


def test_common_name_only_asks_for_that_name() -> None:
    # `openssl req -subj /CN=a.example`, as acme-tiny's README makes the CSR.
    der = make_csr(None, cn="a.example")
    check(der, dns("a.example"))
    assert "missing the order's identifiers dns:b.example" in refused(
        der, dns("a.example", "b.example")
    )


def test_no_names_is_bad_csr() -> None:
    assert "contains no names" in refused(make_csr(None), dns("a.example"))


def test_other_san_types_are_bad_csr() -> None:
    for extra in (
        x509.RFC822Name("a@a.example"),
        x509.UniformResourceIdentifier("https://a.example/"),
    ):
        der = make_csr([x509.DNSName("a.example"), extra])
        detail = refused(der, dns("a.example"))
        assert f"contains a {type(extra).__name__}" in detail


def test_two_common_names_are_bad_csr() -> None:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "a.example"),
            x509.NameAttribute(NameOID.COMMON_NAME, "b.example"),
        ]
    )
    der = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName(san_dns("a.example", "b.example")), False)
        .sign(cert_key(), hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    assert "more than one common name" in refused(der, dns("a.example", "b.example"))


def with_version(version: int, *, sign: bool = True) -> bytes:
    """An RSA CSR for a.example whose PKCS#10 version is `version` (cryptography writes only
    0), signed over that version unless `sign` is false. RSA: the signature's length is the
    key's, so the DER's lengths do not change."""
    der = make_csr(san_dns("a.example"), cn="a.example", key=rsa_key())
    csr = x509.load_der_x509_csr(der)
    tbs = csr.tbs_certrequest_bytes
    start = der.index(tbs)
    header = 2 if tbs[1] < 0x80 else 2 + (tbs[1] & 0x7F)
    assert tbs[header : header + 3] == b"\x02\x01\x00"  # INTEGER 0
    tbs = tbs[: header + 2] + bytes([version]) + tbs[header + 3 :]
    signature = csr.signature
    if sign:
        signature = rsa_key().sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    assert der.endswith(csr.signature)
    assert len(signature) == len(csr.signature)
    return der[:start] + tbs + der[start + len(tbs) : -len(signature)] + signature


def test_version_2_csr_is_read_as_boulder_does() -> None:
    # Acme::Client::CertificateRequest (the Ruby gem before 2.0.19) writes version 2; it was a
    # serverInternal (cryptography's InvalidVersion is no ValueError).
    der = with_version(2)
    csr = check(der, dns("a.example"))
    assert spki_sha256(csr.public_key()) == spki_sha256(rsa_key().public_key())
    assert load_csr(der).public_bytes(serialization.Encoding.DER) == csr.public_bytes(
        serialization.Encoding.DER
    )


def test_version_2_csr_signature_is_checked_over_the_bytes_as_signed() -> None:
    # Version 0 signed, then changed to 2: the signature no longer covers what was sent.
    assert refused(with_version(2, sign=False), dns("a.example")) == "CSR signature is invalid"


def test_other_csr_version_is_bad_csr() -> None:
    assert (
        refused(with_version(3), dns("a.example")) == "CSR version 3 is not 0 (v1, RFC 2986 §4.1)"
    )

"""Leaf issuance: extensions, serials, validity, and both chains verify."""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from acme_ca.ca import (
    CertificateAuthority,
    CertificateProfile,
    IssuedCertificate,
    create_ca,
    import_ca,
)
from acme_ca.ca.crl import shard_of
from acme_ca.clock import FakeClock
from acme_ca.errors import AcmeError, Identifier, ProblemType
from acme_ca.policy.keys import spki_sha256

ISSUER_URL = "http://127.0.0.1:14000/issuer"
OCSP_URL = "http://127.0.0.1:14000/ocsp"
CRL_URL = "http://127.0.0.1:14000/crl/1.crl"

E = TypeVar("E", bound=x509.ExtensionType)
CsrKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@functools.cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def dns(*names: str) -> list[Identifier]:
    return [Identifier(type="dns", value=n) for n in names]


def ip(*addresses: str) -> list[Identifier]:
    return [Identifier(type="ip", value=a) for a in addresses]


def make_csr(key: CsrKey, identifiers: Sequence[Identifier]) -> x509.CertificateSigningRequest:
    sans: list[x509.GeneralName] = [
        x509.DNSName(i.value) if i.type == "dns" else x509.IPAddress(ipaddress.ip_address(i.value))
        for i in identifiers
    ]
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
    )
    return builder.sign(
        key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    )


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory, clock: FakeClock) -> Path:
    data_dir = tmp_path_factory.mktemp("ca")
    create_ca(data_dir, clock=clock)
    return data_dir


@pytest.fixture(scope="module")
def ca(ca_dir: Path, clock: FakeClock) -> CertificateAuthority:
    return CertificateAuthority.load(
        ca_dir, clock=clock, issuer_url=ISSUER_URL, crl_url=CRL_URL, ocsp_url=OCSP_URL
    )


def issue(
    ca: CertificateAuthority,
    identifiers: Sequence[Identifier],
    key: CsrKey | None = None,
    profile: CertificateProfile = CertificateProfile(),  # noqa: B008
) -> tuple[IssuedCertificate, x509.Certificate]:
    csr = make_csr(key or ec_key(), identifiers)
    issued = ca.issue(csr=csr, identifiers=identifiers, serial=ca.new_serial(), profile=profile)
    return issued, x509.load_der_x509_certificate(issued.der)


def ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def test_ec_leaf_extensions(ca: CertificateAuthority, ca_dir: Path) -> None:
    issued, cert = issue(ca, dns("www.example.com", "example.com"))
    intermediate = x509.load_pem_x509_certificate((ca_dir / "intermediate.pem").read_bytes())
    assert cert.issuer == intermediate.subject
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "www.example.com"
    san = ext(cert, x509.SubjectAlternativeName)
    assert not san.critical
    assert san.value.get_values_for_type(x509.DNSName) == ["www.example.com", "example.com"]
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical
    assert not constraints.value.ca
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_encipherment
    assert not usage.value.key_cert_sign
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(ec_key().public_key())
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(intermediate, x509.SubjectKeyIdentifier).value.digest
    aia = {
        d.access_method: d.access_location.value
        for d in ext(cert, x509.AuthorityInformationAccess).value
    }
    assert aia == {
        AuthorityInformationAccessOID.OCSP: OCSP_URL,
        AuthorityInformationAccessOID.CA_ISSUERS: ISSUER_URL,
    }
    points = ext(cert, x509.CRLDistributionPoints).value
    assert [n.value for n in points[0].full_name or []] == [CRL_URL]
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert issued.spki_sha256 == spki_sha256(ec_key().public_key())
    cert.verify_directly_issued_by(intermediate)


def test_rsa_leaf_has_key_encipherment(ca: CertificateAuthority) -> None:
    _, cert = issue(ca, dns("rsa.example"), key=rsa_key())
    usage = ext(cert, x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.key_encipherment
    assert isinstance(cert.public_key(), rsa.RSAPublicKey)


def test_ed25519_leaf(ca: CertificateAuthority) -> None:
    _, cert = issue(ca, dns("ed.example"), key=ed25519.Ed25519PrivateKey.generate())
    assert isinstance(cert.public_key(), ed25519.Ed25519PublicKey)
    assert not ext(cert, x509.KeyUsage).value.key_encipherment


def test_ip_san_and_empty_subject_makes_san_critical(ca: CertificateAuthority) -> None:
    _, cert = issue(ca, ip("192.0.2.7", "2001:db8::1"))
    assert cert.subject == x509.Name([])
    san = ext(cert, x509.SubjectAlternativeName)
    assert san.critical  # RFC 5280 §4.2.1.6
    assert san.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.7"),
        ipaddress.ip_address("2001:db8::1"),
    ]


def test_common_name_skipped_when_longer_than_64(ca: CertificateAuthority) -> None:
    long_name = "a" * 60 + ".example"
    _, cert = issue(ca, dns(long_name, "short.example"))
    assert cert.subject == x509.Name([])
    assert ext(cert, x509.SubjectAlternativeName).critical


def test_profile_without_cn_and_client_auth(ca: CertificateAuthority) -> None:
    profile = CertificateProfile(
        name="tlsserver",
        validity=dt.timedelta(days=7),
        client_auth=False,
        include_common_name=False,
    )
    issued, cert = issue(ca, dns("a.example"), profile=profile)
    assert cert.subject == x509.Name([])
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert issued.not_after - issued.not_before == dt.timedelta(days=7)


def test_default_validity_is_backdated_90_days(ca: CertificateAuthority, clock: FakeClock) -> None:
    issued, cert = issue(ca, dns("a.example"))
    assert issued.not_before == clock.now() - dt.timedelta(minutes=1)
    assert issued.not_after == issued.not_before + dt.timedelta(days=90)
    assert cert.not_valid_before_utc == issued.not_before
    assert cert.not_valid_after_utc == issued.not_after


def test_explicit_validity(ca: CertificateAuthority, clock: FakeClock) -> None:
    start = clock.now() + dt.timedelta(hours=1)
    end = start + dt.timedelta(days=3)
    csr = make_csr(ec_key(), dns("a.example"))
    issued = ca.issue(
        csr=csr, identifiers=dns("a.example"), serial=5, not_before=start, not_after=end
    )
    assert (issued.not_before, issued.not_after) == (start, end)


def test_not_after_past_the_issuer_is_refused(ca: CertificateAuthority, clock: FakeClock) -> None:
    csr = make_csr(ec_key(), dns("a.example"))
    with pytest.raises(AcmeError) as info:
        ca.issue(
            csr=csr,
            identifiers=dns("a.example"),
            serial=6,
            not_after=clock.now() + dt.timedelta(days=6000),
        )
    assert info.value.type is ProblemType.SERVER_INTERNAL


def test_serial_is_used_and_new_serials_are_128_bit(ca: CertificateAuthority) -> None:
    serials = {CertificateAuthority.new_serial() for _ in range(200)}
    assert len(serials) == 200
    assert all(0 < s < 1 << 128 for s in serials)
    csr = make_csr(ec_key(), dns("a.example"))
    issued = ca.issue(csr=csr, identifiers=dns("a.example"), serial=(1 << 128) - 1)
    assert issued.serial == (1 << 128) - 1
    assert x509.load_der_x509_certificate(issued.der).serial_number == (1 << 128) - 1


def test_new_serials_carry_80_random_bits_after_the_time() -> None:
    # CA/B BR §7.1: at least 64 bits from a CSPRNG, not sequential.
    before = time.time_ns() // 1_000_000
    serials = [CertificateAuthority.new_serial() for _ in range(500)]
    after = time.time_ns() // 1_000_000
    assert all(before <= s >> 80 <= after for s in serials)
    assert len({s & ((1 << 80) - 1) for s in serials}) == 500
    # The low bits pick the CRL shard: they are random, so shards fill evenly.
    assert len({shard_of(s, 4) for s in serials}) == 4


def test_new_serials_sort_by_time_as_stored() -> None:
    # Stored as lowercase hex (`ra.issuance`): later serials sort after earlier ones.
    earlier = [format(CertificateAuthority.new_serial(), "x") for _ in range(20)]
    time.sleep(0.002)
    later = [format(CertificateAuthority.new_serial(), "x") for _ in range(20)]
    assert max(earlier) < min(later)


def test_serial_out_of_range_refused(ca: CertificateAuthority) -> None:
    csr = make_csr(ec_key(), dns("a.example"))
    for serial in (0, -1, 1 << 159):
        with pytest.raises(ValueError, match="serial"):
            ca.issue(csr=csr, identifiers=dns("a.example"), serial=serial)


def test_unsupported_identifier_type_refused(ca: CertificateAuthority) -> None:
    csr = make_csr(ec_key(), dns("a.example"))
    with pytest.raises(AcmeError) as info:
        ca.issue(csr=csr, identifiers=[Identifier(type="email", value="a@b.c")], serial=7)
    assert info.value.type is ProblemType.UNSUPPORTED_IDENTIFIER


def test_both_chains_verify(ca: CertificateAuthority, ca_dir: Path, clock: FakeClock) -> None:
    issued, _ = issue(ca, dns("a.example") + ip("127.0.0.1"), key=rsa_key())
    assert len(issued.pem_chains) == 2
    roots = [ca_dir / "root.pem", ca_dir / "root-x2.pem"]
    assert ca.root_pem == roots[0].read_text()
    assert ca.root_pems == tuple(r.read_text() for r in roots)
    assert ca.chain_pems == (
        (ca_dir / "intermediate.pem").read_text(),
        (ca_dir / "intermediate-x2.pem").read_text(),
    )
    for pem_chain, root_path in zip(issued.pem_chains, roots, strict=True):
        leaf, *chain = x509.load_pem_x509_certificates(pem_chain.encode())
        assert leaf.public_bytes(serialization.Encoding.DER) == issued.der
        assert len(chain) == 1
        root = x509.load_pem_x509_certificate(root_path.read_bytes())
        for name in (x509.DNSName("a.example"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
            verifier = (
                verification.PolicyBuilder()
                .store(verification.Store([root]))
                .time(clock.now())
                .build_server_verifier(name)
            )
            verified = verifier.verify(leaf, chain)
            assert verified[-1] == root


def test_p384_issuer_signs_with_sha384(tmp_path: Path, clock: FakeClock) -> None:
    create_ca(tmp_path, clock=clock, key_type="p384")
    ca = CertificateAuthority.load(tmp_path, clock=clock)
    _, cert = issue(ca, dns("a.example"))
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)
    assert not any(isinstance(e.value, x509.AuthorityInformationAccess) for e in cert.extensions)


def test_imported_ca_offers_one_chain(tmp_path: Path, ca_dir: Path, clock: FakeClock) -> None:
    import_ca(
        tmp_path,
        cert_pem=ca_dir / "intermediate.pem",
        key_pem=ca_dir / "intermediate-key.pem",
        chain_pem=ca_dir / "root.pem",
        clock=clock,
    )
    ca = CertificateAuthority.load(tmp_path, clock=clock)
    issued, _ = issue(ca, dns("a.example"))
    assert len(issued.pem_chains) == 1
    assert ca.root_pems == (ca.root_pem,)


def test_load_refuses_mismatched_key(tmp_path: Path, ca_dir: Path, clock: FakeClock) -> None:
    for name in ("intermediate.pem", "root.pem"):
        (tmp_path / name).write_bytes((ca_dir / name).read_bytes())
    (tmp_path / "intermediate-key.pem").write_bytes((ca_dir / "root-key.pem").read_bytes())
    with pytest.raises(ValueError, match="does not match"):
        CertificateAuthority.load(tmp_path, clock=clock)


def _must_staple_csr(identifiers: Sequence[Identifier]) -> x509.CertificateSigningRequest:
    sans = [x509.DNSName(i.value) for i in identifiers]
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.TLSFeature([x509.TLSFeatureType.status_request]), critical=False)
        .sign(ec_key(), hashes.SHA256())
    )


def test_must_staple_requested_in_the_csr_is_in_the_certificate(
    ca: CertificateAuthority,
) -> None:
    # RFC 7633 §4.1: TLS feature status_request, copied from the CSR, not critical.
    csr = _must_staple_csr(dns("staple.example"))
    issued = ca.issue(csr=csr, identifiers=dns("staple.example"), serial=ca.new_serial())
    cert = x509.load_der_x509_certificate(issued.der)
    feature = cert.extensions.get_extension_for_class(x509.TLSFeature)
    assert list(feature.value) == [x509.TLSFeatureType.status_request]
    assert feature.critical is False


def test_no_must_staple_unless_the_csr_asks(ca: CertificateAuthority) -> None:
    _, cert = issue(ca, dns("plain.example"))
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.TLSFeature)


def test_must_staple_refused_where_leaves_name_no_ocsp_responder(
    ca: CertificateAuthority, ca_dir: Path, clock: FakeClock
) -> None:
    csr = _must_staple_csr(dns("staple.example"))
    no_pointers = CertificateProfile(revocation_pointers=False)
    without_ocsp = CertificateAuthority.load(ca_dir, clock=clock, issuer_url=ISSUER_URL)
    for authority, profile in ((ca, no_pointers), (without_ocsp, CertificateProfile())):
        assert not authority.can_staple(profile)
        with pytest.raises(AcmeError) as info:
            authority.issue(
                csr=csr, identifiers=dns("staple.example"), serial=ca.new_serial(), profile=profile
            )
        assert info.value.type is ProblemType.BAD_CSR
        assert "Must-Staple" in info.value.detail
    assert ca.can_staple(CertificateProfile())

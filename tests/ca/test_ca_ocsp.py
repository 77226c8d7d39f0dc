"""The delegated OCSP signer and its answers (RFC 6960), checked with cryptography and OpenSSL."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from acme_ca.ca import CertificateAuthority, create_ca
from acme_ca.ca.ocsp import (
    OCSP_CERT,
    OCSP_KEY,
    OcspSigner,
    ensure_ocsp_signer,
    parse_request,
)
from acme_ca.clock import FakeClock, SystemClock
from acme_ca.errors import Identifier
from acme_ca.model import RevocationReason


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ocsp-ca")
    create_ca(path, clock=SystemClock())
    return path


@pytest.fixture
def ca_dir(template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(template, target)
    return target


@pytest.fixture
def signer(ca_dir: Path) -> OcspSigner:
    ensure_ocsp_signer(ca_dir, clock=SystemClock())
    return OcspSigner.load(ca_dir)


def _leaf(ca_dir: Path, serial: int) -> x509.Certificate:
    ca = CertificateAuthority.load(ca_dir, clock=SystemClock())
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("o.example")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    issued = ca.issue(
        csr=csr, identifiers=[Identifier(type="dns", value="o.example")], serial=serial
    )
    return x509.load_der_x509_certificate(issued.der)


def _request(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    nonce: bytes | None = None,
    algorithm: hashes.HashAlgorithm | None = None,
) -> bytes:
    # RFC 5019 §2.1.1: clients name certificates with SHA-1 CertIDs by default.
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _answer(signer: OcspSigner, der: bytes, **kwargs: object) -> ocsp.OCSPResponse:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    query = parse_request(der)
    response = signer.sign(
        query,
        this_update=now,
        next_update=now + dt.timedelta(hours=1),
        **kwargs,  # type: ignore[arg-type]
    )
    return ocsp.load_der_ocsp_response(response)


def test_signer_certificate_profile(ca_dir: Path) -> None:
    assert ensure_ocsp_signer(ca_dir, clock=SystemClock())
    cert = x509.load_pem_x509_certificate((ca_dir / OCSP_CERT).read_bytes())
    issuer = x509.load_pem_x509_certificates((ca_dir / "intermediate.pem").read_bytes())[0]
    cert.verify_directly_issued_by(issuer)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    assert cert.extensions.get_extension_for_class(x509.OCSPNoCheck)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(days=91)
    assert (ca_dir / OCSP_KEY).stat().st_mode & 0o077 == 0


def test_signer_kept_while_current(ca_dir: Path) -> None:
    assert ensure_ocsp_signer(ca_dir, clock=SystemClock())
    before = (ca_dir / OCSP_CERT).read_bytes()
    assert not ensure_ocsp_signer(ca_dir, clock=SystemClock())
    assert (ca_dir / OCSP_CERT).read_bytes() == before


def test_signer_renewed_near_expiry(ca_dir: Path) -> None:
    ensure_ocsp_signer(ca_dir, clock=SystemClock())
    before = (ca_dir / OCSP_CERT).read_bytes()
    later = FakeClock(dt.datetime.now(dt.UTC) + dt.timedelta(days=61))
    assert ensure_ocsp_signer(ca_dir, clock=later)
    assert (ca_dir / OCSP_CERT).read_bytes() != before


def test_signer_reissued_when_key_does_not_match(ca_dir: Path) -> None:
    ensure_ocsp_signer(ca_dir, clock=SystemClock())
    stray = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (ca_dir / OCSP_KEY).write_bytes(stray)
    with pytest.raises(ValueError, match="does not match"):
        OcspSigner.load(ca_dir)
    assert ensure_ocsp_signer(ca_dir, clock=SystemClock())
    OcspSigner.load(ca_dir)


def test_good_answer(ca_dir: Path, signer: OcspSigner) -> None:
    leaf = _leaf(ca_dir, 0x1234)
    resp = _answer(signer, _request(leaf, signer.issuer), status=ocsp.OCSPCertStatus.GOOD)
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert resp.serial_number == 0x1234
    assert resp.responder_key_hash is not None
    assert resp.certificates == [signer.certificate]
    public = signer.certificate.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))


def test_revoked_answer_carries_time_and_reason(ca_dir: Path, signer: OcspSigner) -> None:
    leaf = _leaf(ca_dir, 0x5678)
    when = dt.datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
    resp = _answer(
        signer,
        _request(leaf, signer.issuer),
        status=ocsp.OCSPCertStatus.REVOKED,
        revoked_at=when,
        reason=RevocationReason.KEY_COMPROMISE,
    )
    assert resp.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert resp.revocation_time_utc == when.replace(microsecond=0)
    assert resp.revocation_reason == x509.ReasonFlags.key_compromise


def test_unknown_answer(ca_dir: Path, signer: OcspSigner) -> None:
    leaf = _leaf(ca_dir, 0x9ABC)
    resp = _answer(signer, _request(leaf, signer.issuer), status=ocsp.OCSPCertStatus.UNKNOWN)
    assert resp.certificate_status == ocsp.OCSPCertStatus.UNKNOWN


def test_nonce_is_echoed(ca_dir: Path, signer: OcspSigner) -> None:
    leaf = _leaf(ca_dir, 0x1111)
    der = _request(leaf, signer.issuer, nonce=b"0123456789abcdef")
    query = parse_request(der)
    assert query.nonce == b"0123456789abcdef"
    resp = _answer(signer, der, status=ocsp.OCSPCertStatus.GOOD, nonce=query.nonce)
    nonce = resp.extensions.get_extension_for_class(x509.OCSPNonce).value
    assert nonce.nonce == b"0123456789abcdef"


def test_knows_issuer_for_each_certid_hash(ca_dir: Path, signer: OcspSigner) -> None:
    leaf = _leaf(ca_dir, 0x2222)
    for algorithm in (hashes.SHA1(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
        assert signer.knows_issuer(
            parse_request(_request(leaf, signer.issuer, algorithm=algorithm))
        )


def test_does_not_know_another_issuer(ca_dir: Path, signer: OcspSigner, tmp_path: Path) -> None:
    other = tmp_path / "other"
    create_ca(other, clock=SystemClock())
    leaf = _leaf(other, 0x3333)
    other_issuer = x509.load_pem_x509_certificates((other / "intermediate.pem").read_bytes())[0]
    assert not signer.knows_issuer(parse_request(_request(leaf, other_issuer)))


def test_garbage_is_not_a_request() -> None:
    with pytest.raises(ValueError, match="not an OCSP request"):
        parse_request(b"\x30\x03\x02\x01\x01")


def test_unsuccessful_responses() -> None:
    for status in (ocsp.OCSPResponseStatus.MALFORMED_REQUEST, ocsp.OCSPResponseStatus.UNAUTHORIZED):
        assert (
            ocsp.load_der_ocsp_response(OcspSigner.unsuccessful(status)).response_status == status
        )


def test_openssl_verifies_a_response(ca_dir: Path, signer: OcspSigner, tmp_path: Path) -> None:
    leaf = _leaf(ca_dir, 0x4444)
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    der = signer.sign(
        parse_request(_request(leaf, signer.issuer)),
        status=ocsp.OCSPCertStatus.GOOD,
        this_update=now,
        next_update=now + dt.timedelta(hours=1),
    )
    (tmp_path / "resp.der").write_bytes(der)
    result = subprocess.run(
        [
            "openssl", "ocsp",
            "-respin", str(tmp_path / "resp.der"),
            "-issuer", str(ca_dir / "intermediate.pem"),
            "-cert", str(tmp_path / "leaf.pem"),
            "-CAfile", str(ca_dir / "root.pem"),
            "-verify_other", str(ca_dir / "intermediate.pem"),
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Response verify OK" in result.stderr
    assert f"{tmp_path / 'leaf.pem'}: good" in result.stdout

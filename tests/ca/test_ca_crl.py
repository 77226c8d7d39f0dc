"""CRL shards: shard URLs in leaves, the CRL's extensions, and OpenSSL as the judge."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from acme_ca.ca import CertificateAuthority, create_ca
from acme_ca.ca.crl import RevokedEntry, build_crl, crl_number, issuer_id, shard_of
from acme_ca.clock import SystemClock
from acme_ca.errors import Identifier
from acme_ca.model import RevocationReason
from acme_ca.status.urls import RevocationUrls

URLS = RevocationUrls("http://127.0.0.1:14080")
SHARDS = 4


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # OpenSSL checks validity against the real time: a real clock here.
    path = tmp_path_factory.mktemp("crl-ca")
    create_ca(path, clock=SystemClock())
    return path


@pytest.fixture(scope="module")
def ca(ca_dir: Path) -> CertificateAuthority:
    return CertificateAuthority.load(
        ca_dir,
        clock=SystemClock(),
        crl_url=URLS.crl_template,
        ocsp_url=URLS.ocsp,
        issuer_url=URLS.issuer_template,
        crl_shards=SHARDS,
    )


def _issuer_key(ca_dir: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(
        (ca_dir / "intermediate-key.pem").read_bytes(), password=None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _leaf(ca: CertificateAuthority, serial: int, tmp: Path) -> tuple[x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("crl.example")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    issued = ca.issue(
        csr=csr, identifiers=[Identifier(type="dns", value="crl.example")], serial=serial
    )
    cert = x509.load_der_x509_certificate(issued.der)
    path = tmp / f"leaf-{serial:x}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, path


def _dp_url(cert: x509.Certificate) -> str:
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    (point,) = list(points)
    assert point.full_name is not None
    (name,) = point.full_name
    return str(name.value)


def _crl(
    ca: CertificateAuthority,
    ca_dir: Path,
    shard: int,
    entries: list[RevokedEntry],
    *,
    now: dt.datetime | None = None,
) -> bytes:
    now = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    return build_crl(
        issuer=ca.issuer,
        issuer_key=_issuer_key(ca_dir),
        entries=entries,
        this_update=now - dt.timedelta(minutes=1),
        next_update=now + dt.timedelta(hours=24),
        shard_url=URLS.crl(issuer_id(ca.issuer), shard),
    )


def _pem_crl(der: bytes, path: Path) -> Path:
    path.write_bytes(x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM))
    return path


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *args], capture_output=True, text=True, timeout=20, check=False
    )


def _verify(ca_dir: Path, leaf: Path, crl: Path) -> subprocess.CompletedProcess[str]:
    return _openssl(
        "verify",
        "-crl_check",
        "-CRLfile",
        str(crl),
        "-CAfile",
        str(ca_dir / "root.pem"),
        "-untrusted",
        str(ca_dir / "intermediate.pem"),
        str(leaf),
    )


def test_leaf_names_its_shard_url(ca: CertificateAuthority, tmp_path: Path) -> None:
    for serial in (1000, 1001, 1002, 1003):
        cert, _ = _leaf(ca, serial, tmp_path)
        shard = shard_of(serial, SHARDS)
        assert _dp_url(cert) == URLS.crl(ca.issuer_id, shard)
        assert _dp_url(cert).endswith(f"/crl/{ca.issuer_id}/{shard}.crl")


def test_leaf_names_ocsp_and_issuer(ca: CertificateAuthority, tmp_path: Path) -> None:
    cert, _ = _leaf(ca, 2000, tmp_path)
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    urls = {d.access_method._name: str(d.access_location.value) for d in aia}
    assert urls == {"OCSP": URLS.ocsp, "caIssuers": URLS.issuer(ca.issuer_id)}


def test_crl_extensions(ca: CertificateAuthority, ca_dir: Path) -> None:
    revoked_at = dt.datetime(2030, 1, 1, 12, tzinfo=dt.UTC)
    der = _crl(
        ca,
        ca_dir,
        1,
        [
            RevokedEntry(serial=5, revoked_at=revoked_at, reason=RevocationReason.KEY_COMPROMISE),
            RevokedEntry(serial=9, revoked_at=revoked_at, reason=RevocationReason.UNSPECIFIED),
        ],
    )
    crl = x509.load_der_x509_crl(der)
    assert crl.is_signature_valid(ca.issuer.public_key())  # type: ignore[arg-type]
    assert crl.issuer == ca.issuer.subject
    idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert idp.critical
    assert idp.value.only_contains_user_certs
    assert [str(n.value) for n in idp.value.full_name or []] == [URLS.crl(ca.issuer_id, 1)]
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > 0
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > crl.last_update_utc
    compromised = crl.get_revoked_certificate_by_serial_number(5)
    assert compromised is not None
    assert compromised.revocation_date_utc == revoked_at
    reason = compromised.extensions.get_extension_for_class(x509.CRLReason).value
    assert reason.reason == x509.ReasonFlags.key_compromise
    # RFC 5280 §5.3.1: no reasonCode at all rather than "unspecified".
    unspecified = crl.get_revoked_certificate_by_serial_number(9)
    assert unspecified is not None
    assert len(unspecified.extensions) == 0


def test_crl_number_grows_with_time() -> None:
    t = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert crl_number(t + dt.timedelta(seconds=1)) > crl_number(t)


def test_next_update_must_follow_this_update(ca: CertificateAuthority, ca_dir: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(ValueError, match="nextUpdate"):
        build_crl(
            issuer=ca.issuer,
            issuer_key=_issuer_key(ca_dir),
            entries=[],
            this_update=now,
            next_update=now,
            shard_url=URLS.crl(ca.issuer_id, 0),
        )


def test_shard_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        shard_of(5, 0)


def test_openssl_crl_verify_accepts_the_crl(
    ca: CertificateAuthority, ca_dir: Path, tmp_path: Path
) -> None:
    crl = _pem_crl(_crl(ca, ca_dir, 0, []), tmp_path / "crl.pem")
    bundle = tmp_path / "issuers.pem"
    bundle.write_bytes(
        (ca_dir / "intermediate.pem").read_bytes() + (ca_dir / "root.pem").read_bytes()
    )
    result = _openssl("crl", "-in", str(crl), "-noout", "-CAfile", str(bundle))
    assert result.returncode == 0, result.stderr
    assert "verify OK" in result.stderr + result.stdout


def test_openssl_crl_verify_rejects_another_issuer(
    ca: CertificateAuthority, ca_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    create_ca(other, clock=SystemClock())
    crl = _pem_crl(_crl(ca, ca_dir, 0, []), tmp_path / "crl.pem")
    bundle = tmp_path / "issuers.pem"
    bundle.write_bytes(
        (other / "intermediate.pem").read_bytes() + (other / "root.pem").read_bytes()
    )
    result = _openssl("crl", "-in", str(crl), "-noout", "-CAfile", str(bundle))
    assert "verify OK" not in result.stderr + result.stdout


def test_openssl_verify_crl_check_rejects_revoked_accepts_good(
    ca: CertificateAuthority, ca_dir: Path, tmp_path: Path
) -> None:
    # Two leaves in shard 2: one revoked, one not.
    revoked, revoked_pem = _leaf(ca, 4 * 700 + 2, tmp_path)
    good, good_pem = _leaf(ca, 4 * 701 + 2, tmp_path)
    assert shard_of(revoked.serial_number, SHARDS) == shard_of(good.serial_number, SHARDS) == 2
    entry = RevokedEntry(
        serial=revoked.serial_number,
        revoked_at=dt.datetime.now(dt.UTC).replace(microsecond=0),
        reason=RevocationReason.SUPERSEDED,
    )
    crl = _pem_crl(_crl(ca, ca_dir, 2, [entry]), tmp_path / "shard2.pem")

    bad = _verify(ca_dir, revoked_pem, crl)
    assert bad.returncode != 0
    assert "certificate revoked" in bad.stdout + bad.stderr

    ok = _verify(ca_dir, good_pem, crl)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"{good_pem}: OK" in ok.stdout


def test_openssl_verify_wont_use_another_shards_crl(
    ca: CertificateAuthority, ca_dir: Path, tmp_path: Path
) -> None:
    # The IDP scopes a CRL to its shard: a leaf of shard 3 finds no CRL in shard 2's.
    _, leaf_pem = _leaf(ca, 4 * 800 + 3, tmp_path)
    crl = _pem_crl(_crl(ca, ca_dir, 2, []), tmp_path / "shard2.pem")
    result = _verify(ca_dir, leaf_pem, crl)
    assert result.returncode != 0
    assert "different CRL scope" in result.stdout + result.stderr


def test_plain_crl_url_is_kept_verbatim(ca_dir: Path, tmp_path: Path) -> None:
    plain = CertificateAuthority.load(
        ca_dir, clock=SystemClock(), crl_url="http://crl.example/ca.crl"
    )
    cert, _ = _leaf(plain, 3000, tmp_path)
    assert _dp_url(cert) == "http://crl.example/ca.crl"

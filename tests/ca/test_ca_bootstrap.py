"""CA creation and import: files, modes, and chains that verify."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from acme_ca.ca import CertificateAuthority, create_ca, ensure_ca, import_ca, issue_tls_certificate
from acme_ca.clock import FakeClock

KEY_FILES = ("root-key.pem", "root-x2-key.pem", "intermediate-key.pem", "tls-key.pem")
CERT_FILES = ("root.pem", "root-x2.pem", "intermediate.pem", "intermediate-x2.pem", "tls.pem")


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory, clock: FakeClock) -> Path:
    data_dir = tmp_path_factory.mktemp("ca") / "data"
    create_ca(data_dir, clock=clock, name="Test CA")
    return data_dir


def certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def cert(path: Path) -> x509.Certificate:
    return certs(path)[0]


def spki(c: x509.Certificate) -> bytes:
    return c.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def verify_server(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    root: x509.Certificate,
    name: x509.verification.Subject,
    when: dt.datetime,
) -> None:
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([root]))
        .time(when)
        .build_server_verifier(name)
    )
    verifier.verify(leaf, intermediates)


def test_files_written_with_private_keys_0600(ca_dir: Path) -> None:
    for name in KEY_FILES:
        assert stat.S_IMODE((ca_dir / name).stat().st_mode) == 0o600, name
        serialization.load_pem_private_key((ca_dir / name).read_bytes(), password=None)
    for name in CERT_FILES:
        assert stat.S_IMODE((ca_dir / name).stat().st_mode) == 0o644, name
    assert sorted(p.name for p in ca_dir.iterdir()) == sorted(KEY_FILES + CERT_FILES)


def test_root_is_self_signed_ca_of_ten_years(ca_dir: Path, clock: FakeClock) -> None:
    root = cert(ca_dir / "root.pem")
    assert root.subject == root.issuer
    root.verify_directly_issued_by(root)
    constraints = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length in (None, 1)
    assert root.not_valid_after_utc - clock.now() > dt.timedelta(days=3640)
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Test CA"


def test_intermediate_signed_by_root_with_pathlen_0(ca_dir: Path, clock: FakeClock) -> None:
    root, intermediate = cert(ca_dir / "root.pem"), cert(ca_dir / "intermediate.pem")
    intermediate.verify_directly_issued_by(root)
    constraints = intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca
    assert constraints.path_length == 0
    usage = intermediate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    validity = intermediate.not_valid_after_utc - clock.now()
    assert dt.timedelta(days=1800) < validity < dt.timedelta(days=1830)
    aki = intermediate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


def test_cross_signed_intermediate_same_subject_and_key_verifies_to_root_x2(
    ca_dir: Path,
) -> None:
    intermediate = cert(ca_dir / "intermediate.pem")
    cross = cert(ca_dir / "intermediate-x2.pem")
    root_x2 = cert(ca_dir / "root-x2.pem")
    assert cross.subject == intermediate.subject
    assert spki(cross) == spki(intermediate)
    assert cross.issuer == root_x2.subject != cert(ca_dir / "root.pem").subject
    cross.verify_directly_issued_by(root_x2)
    with pytest.raises(ValueError, match="does not match"):
        cross.verify_directly_issued_by(cert(ca_dir / "root.pem"))


def test_tls_certificate_verifies_for_each_name(ca_dir: Path, clock: FakeClock) -> None:
    leaf, *chain = certs(ca_dir / "tls.pem")
    assert chain == [cert(ca_dir / "intermediate.pem")]
    root = cert(ca_dir / "root.pem")
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(days=366)
    for name in (
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ):
        verify_server(leaf, chain, root, name, clock.now())
    key = serialization.load_pem_private_key((ca_dir / "tls-key.pem").read_bytes(), None)
    assert spki(leaf) == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_verifies_both_chains(ca_dir: Path, clock: FakeClock) -> None:
    attime = str(int(clock.now().timestamp()))
    for root, intermediate in (
        ("root.pem", "intermediate.pem"),
        ("root-x2.pem", "intermediate-x2.pem"),
    ):
        result = subprocess.run(
            [
                *("openssl", "verify", "-attime", attime),
                *("-CAfile", root, "-untrusted", intermediate, "tls.pem"),
            ],
            cwd=ca_dir,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_ensure_ca_creates_once(tmp_path: Path, clock: FakeClock) -> None:
    assert ensure_ca(tmp_path, clock=clock) is True
    root = (tmp_path / "root.pem").read_bytes()
    assert ensure_ca(tmp_path, clock=clock) is False
    assert (tmp_path / "root.pem").read_bytes() == root


def test_create_ca_refuses_to_replace_a_root(ca_dir: Path, clock: FakeClock) -> None:
    with pytest.raises(FileExistsError):
        create_ca(ca_dir, clock=clock)


def test_rsa_and_p384_key_types(tmp_path: Path, clock: FakeClock) -> None:
    create_ca(tmp_path / "rsa", clock=clock, key_type="rsa2048")
    intermediate = cert(tmp_path / "rsa" / "intermediate.pem")
    assert isinstance(intermediate.public_key(), rsa.RSAPublicKey)
    assert isinstance(intermediate.signature_hash_algorithm, hashes.SHA256)
    leaf, *chain = certs(tmp_path / "rsa" / "tls.pem")
    verify_server(
        leaf, chain, cert(tmp_path / "rsa" / "root.pem"), x509.DNSName("localhost"), clock.now()
    )

    create_ca(tmp_path / "p384", clock=clock, key_type="p384")
    intermediate = cert(tmp_path / "p384" / "intermediate.pem")
    public = intermediate.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP384R1)
    assert isinstance(intermediate.signature_hash_algorithm, hashes.SHA384)


def test_issue_tls_certificate_replaces_names(tmp_path: Path, clock: FakeClock) -> None:
    create_ca(tmp_path, clock=clock)
    issue_tls_certificate(tmp_path, clock=clock, names=["acme.test", "10.0.0.1"])
    leaf = cert(tmp_path / "tls.pem")
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["acme.test"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.1")]
    assert stat.S_IMODE((tmp_path / "tls-key.pem").stat().st_mode) == 0o600


# --- import -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory, clock: FakeClock) -> Path:
    """An existing CA to import: its intermediate, key, and chain (root)."""
    source = tmp_path_factory.mktemp("external")
    create_ca(source, clock=clock, name="Corp")
    return source


def test_import_with_chain(tmp_path: Path, external: Path, clock: FakeClock) -> None:
    import_ca(
        tmp_path,
        cert_pem=external / "intermediate.pem",
        key_pem=external / "intermediate-key.pem",
        chain_pem=external / "root.pem",
        clock=clock,
    )
    assert (tmp_path / "intermediate.pem").read_bytes() == (
        external / "intermediate.pem"
    ).read_bytes()
    assert (tmp_path / "root.pem").read_bytes() == (external / "root.pem").read_bytes()
    assert not (tmp_path / "intermediate-x2.pem").exists()
    assert stat.S_IMODE((tmp_path / "intermediate-key.pem").stat().st_mode) == 0o600
    leaf, *chain = certs(tmp_path / "tls.pem")
    verify_server(leaf, chain, cert(tmp_path / "root.pem"), x509.DNSName("localhost"), clock.now())
    ca = CertificateAuthority.load(tmp_path, clock=clock)
    assert len(ca.chain_pems) == 1


def test_import_longer_chain_keeps_middle_certificates(
    tmp_path: Path, external: Path, clock: FakeClock
) -> None:
    # Issue a sub-CA below the external intermediate, then import it with a two-cert chain.
    parent = cert(external / "intermediate.pem")
    parent_key = serialization.load_pem_private_key(
        (external / "intermediate-key.pem").read_bytes(), None
    )
    assert isinstance(parent_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    sub = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Sub CA")]))
        .issuer_name(parent.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(clock.now() - dt.timedelta(days=1))
        .not_valid_after(clock.now() + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(parent_key, hashes.SHA256())
    )
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "sub.pem").write_bytes(sub.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "in" / "sub-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "in" / "chain.pem").write_bytes(
        (external / "intermediate.pem").read_bytes() + (external / "root.pem").read_bytes()
    )
    out = tmp_path / "out"
    import_ca(
        out,
        cert_pem=tmp_path / "in" / "sub.pem",
        key_pem=tmp_path / "in" / "sub-key.pem",
        chain_pem=tmp_path / "in" / "chain.pem",
        clock=clock,
    )
    assert certs(out / "intermediate.pem") == [sub, parent]
    assert cert(out / "root.pem") == cert(external / "root.pem")
    leaf, *chain = certs(out / "tls.pem")
    assert chain == [sub, parent]
    leaf.verify_directly_issued_by(sub)


def test_import_without_chain_uses_the_certificate_as_root(
    tmp_path: Path, external: Path, clock: FakeClock
) -> None:
    import_ca(
        tmp_path,
        cert_pem=external / "root.pem",
        key_pem=external / "root-key.pem",
        chain_pem=None,
        clock=clock,
    )
    assert cert(tmp_path / "root.pem") == cert(external / "root.pem")
    assert cert(tmp_path / "intermediate.pem") == cert(external / "root.pem")


def test_import_refuses_mismatched_key(tmp_path: Path, external: Path, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="not the private key"):
        import_ca(
            tmp_path,
            cert_pem=external / "intermediate.pem",
            key_pem=external / "root-key.pem",
            chain_pem=None,
            clock=clock,
        )


def test_import_refuses_non_ca_certificate(
    tmp_path: Path, external: Path, clock: FakeClock
) -> None:
    (tmp_path / "leaf.pem").write_bytes(
        cert(external / "tls.pem").public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(ValueError, match="not a CA"):
        import_ca(
            tmp_path / "out",
            cert_pem=tmp_path / "leaf.pem",
            key_pem=external / "tls-key.pem",
            chain_pem=None,
            clock=clock,
        )


def test_import_refuses_chain_that_does_not_link(
    tmp_path: Path, external: Path, clock: FakeClock
) -> None:
    with pytest.raises(ValueError, match="is not issued by"):
        import_ca(
            tmp_path,
            cert_pem=external / "intermediate.pem",
            key_pem=external / "intermediate-key.pem",
            chain_pem=external / "root-x2.pem",
            clock=clock,
        )


def test_public_api_is_pinned() -> None:
    import acme_ca.ca

    assert set(acme_ca.ca.__all__) == {
        "CertificateAuthority",
        "CertificateProfile",
        "IssuedCertificate",
        "KeyType",
        "create_ca",
        "ensure_ca",
        "import_ca",
        "issue_tls_certificate",
        "check_csr",
        "load_csr",
    }

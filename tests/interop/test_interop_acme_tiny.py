"""acme-tiny (the ~200-line Python client, unmodified from Debian) against a running acme-ca.

acme-tiny takes a CSR made beforehand, as its README shows with
`openssl req -subj "/CN=example.com"`: a CSR whose only name is its common name. It
writes the http-01 files into a directory that a static file server serves on the
server's validation port, and trusts the CA's root through SSL_CERT_FILE (Python's
default context). `--disable-check` skips its own pre-fetch of the file, which would
resolve the test names through the system resolver instead of challtestsrv.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.interop.conftest import (
    CLIENT_TIMEOUT,
    AcmeServer,
    _client_env,
    _require,
    assert_chains_to_root,
    dns_names,
)

pytestmark = pytest.mark.interop


@pytest.fixture(scope="session")
def acme_tiny_bin() -> Path:
    on_path = shutil.which("acme-tiny")
    return _require("acme-tiny", Path(on_path) if on_path else None)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _csr(path: Path, *, cn: str, sans: list[str]) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    if sans:
        names = [x509.DNSName(name) for name in sans]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))


def _obtain(
    binary: Path, server: AcmeServer, wellknown: Path, workdir: Path, csr: Path
) -> list[x509.Certificate]:
    account = workdir / "account.key"
    if not account.exists():
        account.write_bytes(_pem_key(rsa.generate_private_key(65537, 2048)))
    env = _client_env(server)
    env["SSL_CERT_FILE"] = str(server.root_pem)
    argv = [
        str(binary),
        "--account-key",
        str(account),
        "--csr",
        str(csr),
        "--acme-dir",
        str(wellknown),
        f"--directory-url={server.directory_url}",
        "--contact",
        "mailto:tiny@example.test",
        "--disable-check",
    ]
    done = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        timeout=CLIENT_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, (
        f"acme-tiny failed ({done.returncode}):\n{done.stderr.decode(errors='replace')}\n"
        f"--- tail of the acme-ca log ---\n{server.log_tail()}"
    )
    return x509.load_pem_x509_certificates(done.stdout)


def test_acme_tiny_common_name_only_csr(
    acme_tiny_bin: Path, acme_server: AcmeServer, wellknown: Path, tmp_path: Path
) -> None:
    # RFC 8555 §7.4: the CSR's names (here only its CN) are the order's identifiers.
    csr = tmp_path / "domain.csr"
    _csr(csr, cn="tiny.example.test", sans=[])
    leaf, *intermediates = _obtain(acme_tiny_bin, acme_server, wellknown, tmp_path, csr)
    assert dns_names(leaf) == {"tiny.example.test"}
    assert_chains_to_root(leaf, intermediates, acme_server.root_pem, "tiny.example.test")


def test_acme_tiny_two_names_and_a_second_order_on_the_same_account(
    acme_tiny_bin: Path, acme_server: AcmeServer, wellknown: Path, tmp_path: Path
) -> None:
    names = ["t2.example.test", "www.t2.example.test"]
    csr = tmp_path / "san.csr"
    _csr(csr, cn=names[0], sans=names)
    first = _obtain(acme_tiny_bin, acme_server, wellknown, tmp_path, csr)[0]
    assert dns_names(first) == set(names)
    # The same account key again: newAccount answers 200 with the existing account.
    second = _obtain(acme_tiny_bin, acme_server, wellknown, tmp_path, csr)[0]
    assert second.serial_number != first.serial_number

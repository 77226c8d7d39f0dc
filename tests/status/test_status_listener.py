"""The CRL and OCSP listener, for real on loopback, with OpenSSL as the judge.

Certificates are issued and revoked through the in-process ACME service; the
listener runs as `acme-ca serve` runs it (its own thread, loop and engines) on
the same database.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from acme_ca.service import AcmeService
from acme_ca.status import StatusListener, StatusSettings, bind_listener
from acme_ca.testing import ChallengeTestServer
from tests.acme_helpers import ClientFactory, issue

TIMEOUT = 10.0


@pytest.fixture
def listener_url(service: AcmeService) -> Iterator[str]:
    yield from _listener(service, ocsp_on=True)


def _listener(service: AcmeService, *, ocsp_on: bool) -> Iterator[str]:
    sock = bind_listener("127.0.0.1", 0)
    port = sock.getsockname()[1]
    listener = StatusListener(
        StatusSettings(
            data_dir=service.settings.data_dir,
            database_url=service.settings.database_url,
            base_url=service.settings.revocation_base_url,
            ocsp=ocsp_on,
            log_level="warning",
        ),
        sock,
    )
    listener.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        listener.stop()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def _http() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=TIMEOUT, trust_env=False)


def _write(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=30, env=_env(), check=False
    )


def _openssl_ocsp(data_dir: Path, url: str, *args: str) -> str:
    result = subprocess.run(
        [
            "openssl", "ocsp",
            "-issuer", str(data_dir / "intermediate.pem"),
            "-url", f"{url}/ocsp",
            "-CAfile", str(data_dir / "root.pem"),
            "-verify_other", str(data_dir / "intermediate.pem"),
            "-timeout", "10",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=_env(),
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Response verify OK" in result.stderr, result.stderr
    return result.stdout + result.stderr


def _crl_path(cert: x509.Certificate) -> str:
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    (point,) = list(points)
    assert point.full_name is not None
    return urlsplit(str(point.full_name[0].value)).path


async def _fetch_crl(
    url: str, cert: x509.Certificate
) -> tuple[httpx.Response, x509.CertificateRevocationList]:
    async with _http() as http:
        resp = await http.get(url + _crl_path(cert))
    assert resp.status_code == 200, resp.text
    return resp, x509.load_der_x509_crl(resp.content)


def _ocsp_request(
    cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None = None
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _issuer(data_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates((data_dir / "intermediate.pem").read_bytes())[0]


async def test_openssl_ocsp_good_revoked_unknown(
    service: AcmeService,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    listener_url: str,
    tmp_path: Path,
) -> None:
    data_dir = service.settings.data_dir
    client = await make_client()
    _, good, _ = await issue(client, ["good.example"], challtestsrv)
    _, bad, _ = await issue(client, ["bad.example"], challtestsrv)
    await client.revoke(bad.public_bytes(serialization.Encoding.DER), reason=4)

    good_pem, bad_pem = _write(tmp_path / "good.pem", good), _write(tmp_path / "bad.pem", bad)
    out = _openssl_ocsp(data_dir, listener_url, "-cert", str(good_pem))
    assert f"{good_pem}: good" in out
    assert "WARNING" not in out  # the nonce came back
    out = _openssl_ocsp(data_dir, listener_url, "-cert", str(bad_pem))
    assert f"{bad_pem}: revoked" in out
    assert "Reason: superseded" in out
    out = _openssl_ocsp(data_dir, listener_url, "-serial", "0x1234567890abcdef", "-no_nonce")
    assert "0x1234567890abcdef: unknown" in out


async def test_revocation_shows_at_once_despite_cache(
    service: AcmeService,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    listener_url: str,
    tmp_path: Path,
) -> None:
    data_dir = service.settings.data_dir
    client = await make_client()
    _, cert, _ = await issue(client, ["cached.example"], challtestsrv)
    request = _ocsp_request(cert, _issuer(data_dir))
    async with _http() as http:
        first = await http.post(
            f"{listener_url}/ocsp",
            content=request,
            headers={"Content-Type": "application/ocsp-request"},
        )
        again = await http.post(f"{listener_url}/ocsp", content=request)
        assert first.headers["content-type"] == "application/ocsp-response"
        assert first.content == again.content  # pre-signed, served from the cache
        assert ocsp.load_der_ocsp_response(first.content).certificate_status == (
            ocsp.OCSPCertStatus.GOOD
        )
        await client.revoke(cert.public_bytes(serialization.Encoding.DER))
        after = await http.post(f"{listener_url}/ocsp", content=request)
    assert ocsp.load_der_ocsp_response(after.content).certificate_status == (
        ocsp.OCSPCertStatus.REVOKED
    )
    pem = _write(tmp_path / "cert.pem", cert)
    assert f"{pem}: revoked" in _openssl_ocsp(data_dir, listener_url, "-cert", str(pem))


async def test_ocsp_get_with_cache_headers(
    service: AcmeService,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    listener_url: str,
) -> None:
    client = await make_client()
    _, cert, _ = await issue(client, ["get.example"], challtestsrv)
    encoded = base64.b64encode(_ocsp_request(cert, _issuer(service.settings.data_dir))).decode()
    async with _http() as http:
        # RFC 6960 Appendix A.1: the base64 is URL-encoded in the path.
        resp = await http.get(
            f"{listener_url}/ocsp/{encoded.replace('/', '%2F').replace('+', '%2B')}"
        )
        nonce_resp = await http.get(
            f"{listener_url}/ocsp/"
            + base64.urlsafe_b64encode(
                _ocsp_request(cert, _issuer(service.settings.data_dir), nonce=b"n" * 16)
            ).decode()
        )
        garbage = await http.get(f"{listener_url}/ocsp/AAAA")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/ocsp-response"
    assert "max-age=" in resp.headers["cache-control"]
    assert "public" in resp.headers["cache-control"]
    assert resp.headers["expires"]
    assert resp.headers["last-modified"]
    parsed = ocsp.load_der_ocsp_response(resp.content)
    assert parsed.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert parsed.serial_number == cert.serial_number
    # A nonce makes the answer unique: never cached.
    assert nonce_resp.headers["cache-control"] == "no-store"
    echoed = ocsp.load_der_ocsp_response(nonce_resp.content)
    assert echoed.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"n" * 16
    assert ocsp.load_der_ocsp_response(garbage.content).response_status == (
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )


async def test_ocsp_for_another_issuer_is_unauthorized(
    service: AcmeService, listener_url: str, tmp_path: Path
) -> None:
    from acme_ca.ca import create_ca
    from acme_ca.clock import SystemClock

    other = tmp_path / "other"
    create_ca(other, clock=SystemClock())
    # Any certificate of the other CA will do: its TLS leaf.
    leaf, issuer = x509.load_pem_x509_certificates((other / "tls.pem").read_bytes())[:2]
    async with _http() as http:
        resp = await http.post(f"{listener_url}/ocsp", content=_ocsp_request(leaf, issuer))
    assert ocsp.load_der_ocsp_response(resp.content).response_status == (
        ocsp.OCSPResponseStatus.UNAUTHORIZED
    )


async def test_crl_served_and_judged_by_openssl(
    service: AcmeService,
    make_client: ClientFactory,
    challtestsrv: ChallengeTestServer,
    listener_url: str,
    tmp_path: Path,
) -> None:
    data_dir = service.settings.data_dir
    client = await make_client()
    _, good, _ = await issue(client, ["crl-good.example"], challtestsrv)
    _, bad, _ = await issue(client, ["crl-bad.example"], challtestsrv)

    before_resp, before = await _fetch_crl(listener_url, bad)
    assert before.get_revoked_certificate_by_serial_number(bad.serial_number) is None
    await client.revoke(bad.public_bytes(serialization.Encoding.DER), reason=1)

    resp, crl = await _fetch_crl(listener_url, bad)
    assert resp.headers["content-type"] == "application/pkix-crl"
    assert "max-age=" in resp.headers["cache-control"]
    assert resp.headers["expires"]
    assert resp.headers["etag"] != before_resp.headers["etag"]
    entry = crl.get_revoked_certificate_by_serial_number(bad.serial_number)
    assert entry is not None
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    old_number = before.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > old_number

    bundle = tmp_path / "issuers.pem"
    bundle.write_bytes(
        (data_dir / "intermediate.pem").read_bytes() + (data_dir / "root.pem").read_bytes()
    )
    crl_pem = tmp_path / "bad.crl.pem"
    crl_pem.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    check = _run("openssl", "crl", "-in", str(crl_pem), "-noout", "-CAfile", str(bundle))
    assert "verify OK" in check.stdout + check.stderr

    def verify(leaf: x509.Certificate, crl_file: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "openssl", "verify", "-crl_check", "-CRLfile", str(crl_file),
                "-CAfile", str(data_dir / "root.pem"),
                "-untrusted", str(data_dir / "intermediate.pem"),
                str(_write(tmp_path / f"{leaf.serial_number:x}.pem", leaf)),
            ],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip

    rejected = verify(bad, crl_pem)
    assert rejected.returncode != 0
    assert "certificate revoked" in rejected.stdout + rejected.stderr

    _, good_crl = await _fetch_crl(listener_url, good)
    good_pem = tmp_path / "good.crl.pem"
    good_pem.write_bytes(good_crl.public_bytes(serialization.Encoding.PEM))
    accepted = verify(good, good_pem)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr


async def test_crl_unknown_shard_or_issuer_is_404(service: AcmeService, listener_url: str) -> None:
    async with _http() as http:
        health = await http.get(f"{listener_url}/health")
        issuer_id = (await http.get(f"{listener_url}/crl/0/0.crl")).status_code
        from acme_ca.ca.crl import issuer_id as id_of

        real = id_of(_issuer(service.settings.data_dir))
        shard = await http.get(f"{listener_url}/crl/{real}/999.crl")
        ok = await http.get(f"{listener_url}/crl/{real}/0.crl")
        issuer = await http.get(f"{listener_url}/issuer/{real}.der")
    assert health.status_code == 200
    assert issuer_id == 404
    assert shard.status_code == 404
    assert ok.status_code == 200
    assert issuer.headers["content-type"] == "application/pkix-cert"
    assert x509.load_der_x509_certificate(issuer.content) == _issuer(service.settings.data_dir)


async def test_crl_shard_that_is_no_small_number_is_404(
    service: AcmeService, listener_url: str
) -> None:
    # A 5000-digit shard made starlette's int convertor raise (Python's 4300-digit
    # limit): a 500 with a traceback instead of 404.
    from acme_ca.ca.crl import issuer_id as id_of

    real = id_of(_issuer(service.settings.data_dir))
    async with _http() as http:
        refused = [
            (await http.get(f"{listener_url}/crl/{real}/{shard}.crl")).status_code
            for shard in ("9" * 5000, "1" * 20, "\u00b2", "-1", "a", "1.2", "")
        ]
        ok = await http.get(f"{listener_url}/crl/{real}/00.crl")
    assert refused == [404] * 7
    assert ok.status_code == 200
    assert ok.headers["content-type"] == "application/pkix-crl"


@pytest.fixture
def no_ocsp_url(service: AcmeService) -> Iterator[str]:
    yield from _listener(service, ocsp_on=False)


async def test_no_ocsp_means_no_responder(service: AcmeService, no_ocsp_url: str) -> None:
    async with _http() as http:
        resp = await http.post(f"{no_ocsp_url}/ocsp", content=b"x")
    assert resp.status_code in (404, 405)

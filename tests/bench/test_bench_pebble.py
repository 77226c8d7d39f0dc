"""The benchmark and its client against a real Pebble (Debian's /usr/bin/pebble) with
pebble-challtestsrv as its DNS. Skipped when Pebble is not installed."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from acme_ca.bench import main
from acme_ca.bench.client import AcmeClient, AcmeProblem, build_csr
from acme_ca.bench.jws import KeyKind, generate_key
from acme_ca.bench.responder import Http01Responder

PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"
CHALLTESTSRV = shutil.which("pebble-challtestsrv") or "/usr/bin/pebble-challtestsrv"

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        not (os.access(PEBBLE, os.X_OK) and os.access(CHALLTESTSRV, os.X_OK)),
        reason="needs pebble and pebble-challtestsrv (Debian package pebble)",
    ),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args!r} exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            time.sleep(0.05)
        else:
            return
    pytest.fail(f"nothing listens on 127.0.0.1:{port}")


def _tls_files(directory: Path) -> Path:
    """A throwaway root and a localhost certificate for Pebble's HTTPS API."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench test root")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "cert.pem").write_bytes(cert.public_bytes(pem))
    (directory / "key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    return directory / "ca.pem"


@dataclass(frozen=True)
class Pebble:
    directory: str
    ca_bundle: Path
    http01_port: int
    pid: int


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    work = tmp_path_factory.mktemp("pebble")
    ca_bundle = _tls_files(work)
    dns, mgmt, api, api_mgmt, http01 = (_free_port() for _ in range(5))
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{api}",
            "managementListenAddress": f"127.0.0.1:{api_mgmt}",
            "certificate": str(work / "cert.pem"),
            "privateKey": str(work / "key.pem"),
            "httpPort": http01,
            "tlsPort": _free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (work / "pebble.json").write_text(json.dumps(config))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cts_log = work / "challtestsrv.log"
        with cts_log.open("wb") as out:
            cts = subprocess.Popen(
                [CHALLTESTSRV, "-dns01", f"127.0.0.1:{dns}", "-management", f"127.0.0.1:{mgmt}",
                 "-http01", "", "-https01", "", "-tlsalpn01", "", "-defaultIPv6", ""],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        procs.append(cts)
        _wait_port(mgmt, cts, cts_log)
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
        pebble_log = work / "pebble.log"
        with pebble_log.open("wb") as out:
            proc = subprocess.Popen(
                [PEBBLE, "-config", str(work / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns}"],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        procs.append(proc)
        _wait_port(api, proc, pebble_log)
        yield Pebble(
            directory=f"https://127.0.0.1:{api}/dir",
            ca_bundle=ca_bundle,
            http01_port=http01,
            pid=proc.pid,
        )
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


def test_tiny_benchmark_against_pebble(pebble: Pebble, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    code = main(
        ["--directory", pebble.directory, "--ca-bundle", str(pebble.ca_bundle),
         "--count", "3", "--concurrency", "1", "--names-per-order", "2",
         "--responder-listen", f"127.0.0.1:{pebble.http01_port}",
         "--server-pid", str(pebble.pid), "--json", str(out), "--no-progress",
         "--stall-timeout", "10", "--request-timeout", "10"]
    )  # fmt: skip
    assert code == 0
    level = json.loads(out.read_text())["levels"][0]
    assert (level["issued"], level["failed"]) == (3, 0), level["errors"]
    assert level["stop_reason"] == "count"
    assert set(level["endpoints"]) >= {"newOrder", "authz", "challenge", "finalize", "certificate"}
    assert level["server_cpu_s"] is not None


async def test_client_issues_revokes_and_deactivates(pebble: Pebble) -> None:
    key = generate_key(KeyKind.P256)
    async with (
        Http01Responder("127.0.0.1", pebble.http01_port) as responder,
        AcmeClient(
            pebble.directory,
            account_key=generate_key(KeyKind.P256),
            verify=str(pebble.ca_bundle),
            timeout=10,
        ) as client,
    ):
        acct = await client.new_account(contact=["mailto:bench@example.com"])
        assert acct.status == 201
        order = await client.new_order(["one.bench.test"])
        authz_url = order.body["authorizations"][0]
        authz = (await client.post_as_get(authz_url)).body
        chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
        responder.tokens[chall["token"]] = client.key_authorization(chall["token"])
        await client.respond_challenge(chall["url"])
        await client.poll(authz_url, until={"valid"}, timeout=10, min_delay=0.01)
        assert order.location is not None
        await client.finalize(order.body["finalize"], build_csr(key, ["one.bench.test"]))
        done = await client.poll(order.location, until={"valid"}, timeout=10, min_delay=0.01)
        chain = await client.download_certificate(done.body["certificate"])
        leaf = x509.load_pem_x509_certificates(chain.content)[0]
        der = leaf.public_bytes(serialization.Encoding.DER)
        await client.revoke(der, reason=1)
        with pytest.raises(AcmeProblem) as info:  # RFC 8555 §7.6
            await client.revoke(der, reason=1)
        assert info.value.type == "urn:ietf:params:acme:error:alreadyRevoked"
        deactivated = await client.deactivate_account()
        assert deactivated.body["status"] == "deactivated"
        with pytest.raises(AcmeProblem) as info:  # RFC 8555 §7.3.6
            await client.new_order(["two.bench.test"])
        assert info.value.status in (401, 403)

"""tls-alpn-01 (RFC 8737, RFC 8738 §6) against real loopback TLS servers."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import socket
from pathlib import Path

from cryptography import x509

from acme_ca.errors import Identifier, ProblemType
from acme_ca.model import ChallengeType
from acme_ca.va import (
    VAConfig,
    ValidationAuthority,
    ValidationRequest,
    ValidationResult,
    acme_identifier_value,
)
from tests.va.va_servers import (
    ACME_TLS_1,
    KEY_AUTH,
    TOKEN,
    FakeResolver,
    GarbageServer,
    TlsServer,
    alpn_cert,
    make_cert,
    server_context,
)


def _config(port: int, **kw: object) -> VAConfig:
    return VAConfig(
        tlsalpn01_port=port,
        allow_private_addresses=True,
        connect_timeout=2.0,
        total_timeout=5.0,
        **kw,  # type: ignore[arg-type]
    )


async def _validate(
    config: VAConfig, *, name: str = "example.com", kind: str = "dns"
) -> ValidationResult:
    va = ValidationAuthority(config, FakeResolver(addresses={"example.com": ["127.0.0.1"]}))
    request = ValidationRequest(
        challenge_type=ChallengeType.TLS_ALPN_01,
        identifier=Identifier(type=kind, value=name),
        token=TOKEN,
        key_authorization=KEY_AUTH,
    )
    async with asyncio.timeout(15):
        return await va.validate(request)


async def _run(
    cert: tuple[Path, Path], *, alpn: bool = True, **kw: object
) -> tuple[ValidationResult, TlsServer]:
    context = server_context(cert, alpn=[ACME_TLS_1] if alpn else [])
    async with TlsServer(context) as server:
        result = await _validate(_config(server.port), **kw)  # type: ignore[arg-type]
    return result, server


def test_acme_identifier_value_is_der_octet_string() -> None:
    value = acme_identifier_value(KEY_AUTH)
    assert value[:2] == b"\x04\x20"
    assert value[2:] == hashlib.sha256(KEY_AUTH.encode()).digest()


async def test_valid(tmp_path: Path) -> None:
    result, server = await _run(alpn_cert(tmp_path, "example.com"))
    assert result.error is None, result.error
    assert server.sni == ["example.com"]
    assert result.records == (
        {
            "hostname": "example.com",
            "port": str(_port_of(result)),
            "addressesResolved": ["127.0.0.1"],
            "addressUsed": "127.0.0.1",
        },
    )


def _port_of(result: ValidationResult) -> int:
    return int(result.records[0]["port"])


async def test_san_comparison_ignores_case(tmp_path: Path) -> None:
    result, _ = await _run(alpn_cert(tmp_path, "Example.COM"))
    assert result.error is None


async def test_valid_ip_identifier_uses_reverse_name_sni(tmp_path: Path) -> None:
    result, server = await _run(alpn_cert(tmp_path, "127.0.0.1"), name="127.0.0.1", kind="ip")
    assert result.error is None, result.error
    # RFC 8738 §6: SNI is the in-addr.arpa name, the SAN the iPAddress.
    assert server.sni == ["1.0.0.127.in-addr.arpa"]


async def test_valid_ipv6_identifier(tmp_path: Path) -> None:
    context = server_context(alpn_cert(tmp_path, "::1"), alpn=[ACME_TLS_1])
    async with TlsServer(context, host="::1") as server:
        result = await _validate(_config(server.port), name="::1", kind="ip")
    assert result.error is None, result.error
    assert server.sni == [ipaddress.ip_address("::1").reverse_pointer]
    assert server.sni[0] is not None
    assert server.sni[0].endswith(".ip6.arpa")


async def test_ip_identifier_needs_ip_san(tmp_path: Path) -> None:
    cert = make_cert(
        tmp_path,
        names=[x509.DNSName("127.0.0.1")],
        acme_extension=acme_identifier_value(KEY_AUTH),
    )
    result, _ = await _run(cert, name="127.0.0.1", kind="ip")
    assert result.error is not None
    assert result.error.type == ProblemType.UNAUTHORIZED


async def test_missing_extension(tmp_path: Path) -> None:
    result, _ = await _run(make_cert(tmp_path, names=[x509.DNSName("example.com")]))
    assert result.error is not None
    assert result.error.type == ProblemType.UNAUTHORIZED
    assert "no acmeIdentifier extension" in result.error.detail


async def test_non_critical_extension(tmp_path: Path) -> None:
    cert = make_cert(
        tmp_path,
        names=[x509.DNSName("example.com")],
        acme_extension=acme_identifier_value(KEY_AUTH),
        critical=False,
    )
    result, _ = await _run(cert)
    assert result.error is not None
    assert result.error.type == ProblemType.UNAUTHORIZED
    assert "not critical" in result.error.detail


async def test_wrong_digest(tmp_path: Path) -> None:
    result, _ = await _run(alpn_cert(tmp_path, "example.com", key_auth=f"{TOKEN}.other"))
    assert result.error is not None
    assert result.error.type == ProblemType.UNAUTHORIZED
    assert "does not match" in result.error.detail


async def test_bare_digest_without_octet_string_is_refused(tmp_path: Path) -> None:
    cert = make_cert(
        tmp_path,
        names=[x509.DNSName("example.com")],
        acme_extension=hashlib.sha256(KEY_AUTH.encode()).digest(),
    )
    result, _ = await _run(cert)
    assert result.error is not None
    assert result.error.type == ProblemType.UNAUTHORIZED


async def test_wrong_san(tmp_path: Path) -> None:
    result, _ = await _run(alpn_cert(tmp_path, "other.example"))
    assert result.error is not None
    assert result.error.type == ProblemType.UNAUTHORIZED
    assert "other.example" in result.error.detail


async def test_extra_san_is_refused(tmp_path: Path) -> None:
    cert = make_cert(
        tmp_path,
        names=[x509.DNSName("example.com"), x509.DNSName("extra.example")],
        acme_extension=acme_identifier_value(KEY_AUTH),
    )
    result, _ = await _run(cert)
    assert result.error is not None
    assert result.error.type == ProblemType.UNAUTHORIZED


async def test_missing_san(tmp_path: Path) -> None:
    cert = make_cert(tmp_path, names=[], acme_extension=acme_identifier_value(KEY_AUTH))
    result, _ = await _run(cert)
    assert result.error is not None
    assert result.error.type == ProblemType.UNAUTHORIZED
    assert "without a subjectAltName" in result.error.detail


async def test_no_alpn_is_tls_problem(tmp_path: Path) -> None:
    result, _ = await _run(alpn_cert(tmp_path, "example.com"), alpn=False)
    assert result.error is not None
    assert result.error.type == ProblemType.TLS
    assert ACME_TLS_1 in result.error.detail


async def test_other_alpn_is_tls_problem(tmp_path: Path) -> None:
    context = server_context(alpn_cert(tmp_path, "example.com"), alpn=["http/1.1"])
    async with TlsServer(context) as server:
        result = await _validate(_config(server.port))
    assert result.error is not None
    assert result.error.type == ProblemType.TLS


async def test_not_tls_is_tls_problem() -> None:
    async with GarbageServer() as server:
        result = await _validate(_config(server.port))
    assert result.error is not None
    assert result.error.type == ProblemType.TLS
    assert "SSL" not in result.error.detail


async def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    result = await _validate(_config(closed_port))
    assert result.error is not None
    assert result.error.type == ProblemType.CONNECTION


async def test_private_address_refused_by_default(tmp_path: Path) -> None:
    context = server_context(alpn_cert(tmp_path, "example.com"), alpn=[ACME_TLS_1])
    async with TlsServer(context) as server:
        config = VAConfig(tlsalpn01_port=server.port, total_timeout=5.0)
        result = await _validate(config)
    assert result.error is not None
    assert result.error.type == ProblemType.CONNECTION
    assert server.connections == 0
    assert ipaddress.ip_address(result.records[0]["addressesResolved"][0]).is_loopback

"""dns-01 (RFC 8555 §8.4) and the resolver, against a loopback UDP DNS server."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import ipaddress
import socket
from collections.abc import AsyncIterator

import pytest

from acme_ca.errors import AcmeError, Identifier, ProblemType
from acme_ca.model import ChallengeType
from acme_ca.va import (
    DnsResolver,
    VAConfig,
    ValidationAuthority,
    ValidationRequest,
    ValidationResult,
    dns01_txt_value,
)
from tests.va.va_servers import KEY_AUTH, TOKEN, DnsServer, HttpServer

EXPECTED = (
    base64.urlsafe_b64encode(hashlib.sha256(KEY_AUTH.encode()).digest()).rstrip(b"=").decode()
)


@pytest.fixture
async def dns_server() -> AsyncIterator[DnsServer]:
    async with DnsServer() as server:
        yield server


def _config(server: DnsServer, **kw: object) -> VAConfig:
    base = VAConfig(dns_resolver=server.address, dns_timeout=2.0, total_timeout=5.0)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


async def _validate(
    config: VAConfig,
    *,
    name: str = "example.com",
    kind: str = "dns",
    challenge: ChallengeType = ChallengeType.DNS_01,
) -> ValidationResult:
    request = ValidationRequest(
        challenge_type=challenge,
        identifier=Identifier(type=kind, value=name),
        token=TOKEN,
        key_authorization=KEY_AUTH,
    )
    async with asyncio.timeout(15):
        return await ValidationAuthority(config).validate(request)


def test_txt_value() -> None:
    assert dns01_txt_value(KEY_AUTH) == EXPECTED
    assert "=" not in EXPECTED


async def test_valid(dns_server: DnsServer) -> None:
    dns_server.add("_acme-challenge.example.com", "TXT", f'"{EXPECTED}"')
    result = await _validate(_config(dns_server))
    assert result.error is None, result.error
    assert result.records == ({"hostname": "example.com"},)


async def test_valid_among_several_records(dns_server: DnsServer) -> None:
    dns_server.add("_acme-challenge.example.com", "TXT", '"stale"', f'"{EXPECTED}"')
    assert (await _validate(_config(dns_server))).error is None


async def test_split_character_strings_are_joined(dns_server: DnsServer) -> None:
    dns_server.add("_acme-challenge.example.com", "TXT", f'"{EXPECTED[:10]}" "{EXPECTED[10:]}"')
    assert (await _validate(_config(dns_server))).error is None


async def test_incorrect_record(dns_server: DnsServer) -> None:
    dns_server.add("_acme-challenge.example.com", "TXT", '"wrong"')
    result = await _validate(_config(dns_server))
    assert result.error is not None
    assert result.error.type == ProblemType.UNAUTHORIZED
    assert (
        result.error.detail == 'Incorrect TXT record "wrong" found at _acme-challenge.example.com'
    )


async def test_nxdomain(dns_server: DnsServer) -> None:
    result = await _validate(_config(dns_server))
    assert result.error is not None
    assert result.error.type == ProblemType.DNS
    assert "NXDOMAIN" in result.error.detail
    assert "_acme-challenge.example.com" in result.error.detail


async def test_no_txt_records(dns_server: DnsServer) -> None:
    dns_server.add("_acme-challenge.example.com", "A", "192.0.2.1")
    result = await _validate(_config(dns_server))
    assert result.error is not None
    assert result.error.type == ProblemType.DNS
    assert "No TXT records" in result.error.detail


async def test_servfail(dns_server: DnsServer) -> None:
    dns_server.servfail.add("_acme-challenge.example.com")
    result = await _validate(_config(dns_server))
    assert result.error is not None
    assert result.error.type == ProblemType.DNS
    assert "SERVFAIL" in result.error.detail


async def test_timeout(dns_server: DnsServer) -> None:
    dns_server.silent.add("_acme-challenge.example.com")
    result = await _validate(_config(dns_server, dns_timeout=0.3))
    assert result.error is not None
    assert result.error.type == ProblemType.DNS
    assert "timed out" in result.error.detail


async def test_ip_identifier_is_refused(dns_server: DnsServer) -> None:
    result = await _validate(_config(dns_server), name="127.0.0.1", kind="ip")
    assert result.error is not None
    assert result.error.type == ProblemType.MALFORMED


async def test_resolver_addresses(dns_server: DnsServer) -> None:
    dns_server.add("host.example", "A", "192.0.2.1", "192.0.2.2")
    dns_server.add("host.example", "AAAA", "2001:db8::1")
    dns_server.add("v4only.example", "A", "192.0.2.3")
    resolver = DnsResolver(_config(dns_server))
    assert sorted(map(str, await resolver.addresses("host.example"))) == [
        "192.0.2.1",
        "192.0.2.2",
        "2001:db8::1",
    ]
    assert await resolver.addresses("v4only.example") == [ipaddress.ip_address("192.0.2.3")]
    with pytest.raises(AcmeError) as info:
        await resolver.addresses("missing.example")
    assert info.value.type == ProblemType.DNS
    assert "NXDOMAIN looking up A for missing.example" in info.value.detail


async def test_resolver_name_without_addresses(dns_server: DnsServer) -> None:
    dns_server.add("txtonly.example", "TXT", '"x"')
    with pytest.raises(AcmeError) as info:
        await DnsResolver(_config(dns_server)).addresses("txtonly.example")
    assert info.value.type == ProblemType.DNS


async def test_resolver_bounds_answers(dns_server: DnsServer) -> None:
    dns_server.add("many.example", "TXT", *(f'"v{i}"' for i in range(20)))
    resolver = DnsResolver(_config(dns_server, max_dns_answers=5))
    assert len(await resolver.txt("many.example")) == 5


async def test_resolver_invalid_name(dns_server: DnsServer) -> None:
    with pytest.raises(AcmeError) as info:
        await DnsResolver(_config(dns_server)).txt("a..b")
    assert info.value.type == ProblemType.DNS


async def test_resolver_caa(dns_server: DnsServer) -> None:
    dns_server.add("caa.example", "CAA", '0 issue "ca.example"', '128 iodef "mailto:a@b.example"')
    resolver = DnsResolver(_config(dns_server))
    assert sorted(await resolver.caa("caa.example")) == [
        (0, "issue", "ca.example"),
        (128, "iodef", "mailto:a@b.example"),
    ]
    # RFC 8659 §3: no CAA records, or no such name, is an empty set, not an error.
    dns_server.add("plain.example", "A", "192.0.2.1")
    assert await resolver.caa("plain.example") == []
    assert await resolver.caa("missing.example") == []
    dns_server.servfail.add("broken.example")
    with pytest.raises(AcmeError):
        await resolver.caa("broken.example")


async def test_unreachable_resolver() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = VAConfig(dns_resolver=("127.0.0.1", port), dns_timeout=0.5, total_timeout=5.0)
    result = await _validate(config)
    assert result.error is not None
    assert result.error.type == ProblemType.DNS


async def test_http01_through_real_resolver(dns_server: DnsServer) -> None:
    dns_server.add("web.example", "A", "127.0.0.1")
    async with HttpServer() as http:
        http.challenge(KEY_AUTH)
        config = _config(dns_server, http01_port=http.port, allow_private_addresses=True)
        result = await _validate(config, name="web.example", challenge=ChallengeType.HTTP_01)
    assert result.error is None, result.error
    assert result.records[0]["addressesResolved"] == ["127.0.0.1"]

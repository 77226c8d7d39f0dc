"""ValidationAuthority: dispatch, request checks, time bound, and never raising."""

from __future__ import annotations

import ast
import asyncio
import ipaddress
from pathlib import Path

import pytest

import acme_ca.va
from acme_ca.errors import Identifier, ProblemType
from acme_ca.model import ChallengeType
from acme_ca.va import VAConfig, ValidationAuthority, ValidationRequest, ValidationResult
from tests.va.va_servers import KEY_AUTH, TOKEN, FakeResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ExplodingResolver(FakeResolver):
    async def addresses(self, name: str) -> list[IPAddress]:
        raise RuntimeError("secret internal detail")

    async def txt(self, name: str) -> list[str]:
        raise KeyError("secret internal detail")


class HangingResolver(FakeResolver):
    async def addresses(self, name: str) -> list[IPAddress]:
        await asyncio.sleep(30)
        return []

    async def txt(self, name: str) -> list[str]:
        await asyncio.sleep(30)
        return []


def _request(
    challenge: ChallengeType = ChallengeType.HTTP_01,
    *,
    kind: str = "dns",
    name: str = "example.com",
    token: str = TOKEN,
    key_authorization: str = KEY_AUTH,
) -> ValidationRequest:
    return ValidationRequest(
        challenge_type=challenge,
        identifier=Identifier(type=kind, value=name),
        token=token,
        key_authorization=key_authorization,
    )


async def _validate(va: ValidationAuthority, request: ValidationRequest) -> ValidationResult:
    async with asyncio.timeout(10):
        return await va.validate(request)


def test_public_api_is_pinned() -> None:
    assert sorted(acme_ca.va.__all__) == sorted(
        [
            "ValidationAuthority",
            "ValidationRequest",
            "ValidationResult",
            "VAConfig",
            "Resolver",
            "DnsResolver",
            "is_public_address",
            "dns01_txt_value",
            "acme_identifier_value",
            "ACME_TLS_1",
            "ID_PE_ACME_IDENTIFIER",
        ]
    )


def test_va_imports_stay_within_its_layer() -> None:
    allowed = {"acme_ca.errors", "acme_ca.model", "acme_ca.clock"}
    package = Path(acme_ca.va.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("acme_ca") and not name.startswith("acme_ca.va"):
                    assert name in allowed, f"{path.name} imports {name}"


@pytest.mark.parametrize("challenge", list(ChallengeType))
async def test_unexpected_exception_becomes_server_internal(challenge: ChallengeType) -> None:
    va = ValidationAuthority(VAConfig(), ExplodingResolver())
    result = await _validate(va, _request(challenge))
    assert result.error is not None
    assert result.error.type == ProblemType.SERVER_INTERNAL
    assert "secret" not in result.error.detail


@pytest.mark.parametrize("challenge", list(ChallengeType))
async def test_total_timeout(challenge: ChallengeType) -> None:
    va = ValidationAuthority(VAConfig(total_timeout=0.2), HangingResolver())
    result = await _validate(va, _request(challenge))
    assert result.error is not None
    assert result.error.type == ProblemType.CONNECTION
    assert "Timeout" in result.error.detail


async def test_wildcard_identifier_is_refused() -> None:
    resolver = FakeResolver()
    va = ValidationAuthority(VAConfig(), resolver)
    result = await _validate(va, _request(name="*.example.com"))
    assert result.error is not None
    assert result.error.type == ProblemType.MALFORMED
    assert resolver.lookups == []


@pytest.mark.parametrize("token", ["", "../../etc/passwd", "a/b", "tok en", "x" * 300])
async def test_bad_token_is_refused(token: str) -> None:
    va = ValidationAuthority(VAConfig(), FakeResolver())
    result = await _validate(va, _request(token=token, key_authorization=f"{token}.x"))
    assert result.error is not None
    assert result.error.type == ProblemType.MALFORMED


async def test_key_authorization_must_match_token() -> None:
    va = ValidationAuthority(VAConfig(), FakeResolver())
    result = await _validate(va, _request(key_authorization="other.thumb"))
    assert result.error is not None
    assert result.error.type == ProblemType.MALFORMED


async def test_unknown_identifier_type() -> None:
    va = ValidationAuthority(VAConfig(), FakeResolver())
    result = await _validate(va, _request(kind="email", name="a@example.com"))
    assert result.error is not None
    assert result.error.type == ProblemType.UNSUPPORTED_IDENTIFIER


async def test_bad_ip_identifier() -> None:
    va = ValidationAuthority(VAConfig(), FakeResolver())
    result = await _validate(va, _request(kind="ip", name="999.1.1.1"))
    assert result.error is not None
    assert result.error.type == ProblemType.MALFORMED


async def test_non_ascii_name_is_refused() -> None:
    va = ValidationAuthority(VAConfig(), FakeResolver())
    result = await _validate(va, _request(name="bücher.example"))
    assert result.error is not None
    assert result.error.type == ProblemType.MALFORMED


async def test_caller_cancellation_propagates() -> None:
    va = ValidationAuthority(VAConfig(total_timeout=30), HangingResolver())
    task = asyncio.create_task(va.validate(_request()))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

"""IP identifiers (RFC 8738) by configuration: allowed ranges, or off."""

from __future__ import annotations

from pathlib import Path

import pytest

from acme_ca.bench.client import AcmeProblem
from acme_ca.config import ConfigError, Settings
from acme_ca.testing import ChallengeTestServer
from tests.policy_helpers import client_for, running_service

REJECTED = "urn:ietf:params:acme:error:rejectedIdentifier"


async def test_ip_ranges_limit_ip_identifiers(
    data_dir: Path, challtestsrv: ChallengeTestServer, database_url: str
) -> None:
    ranges = ("10.0.0.0/8", "fd00::/8")
    async with (
        running_service(data_dir, challtestsrv, database_url, ip_ranges=ranges) as svc,
        client_for(svc) as client,
    ):
        ok = await client.new_order([{"type": "ip", "value": "10.1.2.3"}])
        assert ok.body["identifiers"] == [{"type": "ip", "value": "10.1.2.3"}]
        await client.new_order([{"type": "ip", "value": "fd00:0:0::1"}])
        with pytest.raises(AcmeProblem) as info:
            await client.new_order([{"type": "ip", "value": "192.0.2.1"}])
        assert info.value.type == REJECTED
        assert "outside the ranges" in info.value.detail


async def test_ip_identifiers_can_be_turned_off(
    data_dir: Path, challtestsrv: ChallengeTestServer, database_url: str
) -> None:
    async with (
        running_service(data_dir, challtestsrv, database_url, ip_identifiers=False) as svc,
        client_for(svc) as client,
    ):
        with pytest.raises(AcmeProblem) as info:
            await client.new_order([{"type": "ip", "value": "10.1.2.3"}])
        assert info.value.type == REJECTED
        assert "not enabled" in info.value.detail


def test_bad_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="CIDR"):
        Settings(ip_ranges=("10.0.0.0/33",))

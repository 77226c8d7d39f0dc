"""The address guard refuses every non-public address (SSRF protection)."""

from __future__ import annotations

import ipaddress

import pytest

from acme_ca.errors import ProblemType
from acme_ca.va.address_guard import is_public_address, refused, usable_addresses

BLOCKED = [
    "0.0.0.0",
    "10.1.2.3",
    "100.64.0.1",  # CGNAT
    "127.0.0.1",
    "127.255.255.254",
    "169.254.169.254",  # cloud metadata
    "172.16.0.1",
    "172.31.255.255",
    "192.0.0.8",
    "192.0.2.1",  # documentation
    "192.88.99.1",
    "192.168.1.1",
    "198.18.0.1",
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.1",  # multicast
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:10.0.0.1",
    "::ffff:8.8.8.8",  # mapped forms are refused outright
    "::127.0.0.1",  # IPv4-compatible
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "100::1",  # discard
    "2001::1",  # Teredo
    "2001:db8::1",  # documentation
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "3fff::1",
    "fc00::1",  # ULA
    "fd12:3456::1",
    "fe80::1",  # link-local
    "ff02::1",  # multicast
]
ALLOWED = ["1.1.1.1", "8.8.8.8", "93.184.216.34", "172.32.0.1", "2606:4700::1111", "2a00:1450::1"]


@pytest.mark.parametrize("address", BLOCKED)
def test_blocked(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_allowed(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


def test_usable_addresses_filters_and_keeps_order() -> None:
    addresses = [ipaddress.ip_address(a) for a in ("10.0.0.1", "8.8.8.8", "::1", "1.1.1.1")]
    assert [str(a) for a in usable_addresses(addresses, allow_private=False)] == [
        "8.8.8.8",
        "1.1.1.1",
    ]
    assert usable_addresses(addresses, allow_private=True) == addresses


def test_refusal_names_host_not_address() -> None:
    problem = refused("example.com")
    assert problem.type == ProblemType.CONNECTION
    assert "example.com" in problem.detail
    assert "private" not in problem.detail

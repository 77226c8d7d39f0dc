"""Which addresses the VA may connect to.

A validation connects wherever the applicant's DNS (or redirect) points, so
without this guard the VA could be aimed at the CA's own network (SSRF). Only
globally routable unicast addresses pass unless `allow_private_addresses` is
set. Pure: no I/O.

A refusal is `connection` (RFC 8555 §6.7: the server could not connect to the
validation target), with a detail that names the host but not the address or
which rule matched, so the answer reveals nothing of the CA's network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from acme_ca.errors import AcmeError, ProblemType

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IANA IPv4 Special-Purpose Address Registry (RFC 6890 and updates), plus
# multicast and the old class E; written out because `ipaddress.is_global`
# differs between Python patch releases.
_BLOCKED_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # RFC 6598 carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local
        "172.16.0.0/12",  # RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # RFC 5737 documentation
        "192.31.196.0/24",  # AS112
        "192.52.193.0/24",  # AMT
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # RFC 1918
        "192.175.48.0/24",  # AS112 direct delegation
        "198.18.0.0/15",  # RFC 2544 benchmarking
        "198.51.100.0/24",  # RFC 5737 documentation
        "203.0.113.0/24",  # RFC 5737 documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255 broadcast
    )
)

# Only 2000::/3 is allocated global unicast, so everything else is refused:
# loopback, unspecified, IPv4-mapped and -compatible (which would reach an IPv4
# address by the back door), NAT64, discard, ULA, link-local, multicast.
# Inside 2000::/3, the special-purpose blocks.
_GLOBAL_V6 = ipaddress.IPv6Network("2000::/3")
_BLOCKED_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "2001::/23",  # IETF protocol assignments (Teredo, ORCHID, benchmarking ...)
        "2001:db8::/32",  # RFC 3849 documentation
        "2002::/16",  # 6to4 would reach any IPv4 address, private ones included
        "3fff::/20",  # RFC 9637 documentation
    )
)


def is_public_address(address: IPAddress) -> bool:
    """Whether `address` is globally routable unicast, the only kind the VA reaches by default."""
    if isinstance(address, ipaddress.IPv4Address):
        return not any(address in net for net in _BLOCKED_V4)
    if address not in _GLOBAL_V6:
        return False
    return not any(address in net for net in _BLOCKED_V6)


def usable_addresses(addresses: Iterable[IPAddress], *, allow_private: bool) -> list[IPAddress]:
    """The addresses the VA may connect to, in their original order."""
    return [a for a in addresses if allow_private or is_public_address(a)]


def refused(hostname: str) -> AcmeError:
    """The problem for a host whose every address was refused by the guard."""
    return AcmeError(
        type=ProblemType.CONNECTION,
        detail=f"No publicly routable IP address found for {hostname}",
    )

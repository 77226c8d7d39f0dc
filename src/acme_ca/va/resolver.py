"""The VA's one DNS resolver: address, TXT and CAA lookups.

`Resolver` is the narrow interface the challenge modules use, so tests may
hand in a fake; `DnsResolver` implements it with dnspython, sending queries
to the configured recursive resolver (UDP, falling back to TCP on truncation).
Every failure becomes `AcmeError(dns)` naming the queried name; nothing else
is raised. It does not judge addresses: that is `address_guard`'s job.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from acme_ca.errors import AcmeError, ProblemType
from acme_ca.va.types import VAConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Resolver(Protocol):
    """DNS lookups as the VA needs them; each raises `AcmeError(dns)` on failure."""

    async def addresses(self, name: str) -> list[IPAddress]:
        """A and AAAA addresses of `name`; never empty."""
        ...

    async def txt(self, name: str) -> list[str]:
        """TXT records of `name`, each one's strings joined; never empty."""
        ...

    async def caa(self, name: str) -> list[tuple[int, str, str]]:
        """CAA records (flags, tag, value) of `name`; empty when it has none (RFC 8659 §3)."""
        ...


def _dns_problem(detail: str) -> AcmeError:
    return AcmeError(type=ProblemType.DNS, detail=detail)


class DnsResolver:
    """`Resolver` over dnspython's asynchronous stub resolver."""

    def __init__(self, config: VAConfig) -> None:
        self._max_answers = config.max_dns_answers
        if config.dns_resolver is None:
            try:
                resolver = dns.asyncresolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration:
                # No usable system configuration: every lookup fails as a
                # dns problem rather than the constructor raising.
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = []
        else:
            host, port = config.dns_resolver
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port)]
        # Each attempt is short and the whole lookup bounded, retries included.
        resolver.lifetime = config.dns_timeout
        resolver.timeout = min(2.0, config.dns_timeout)
        resolver.cache = None
        self._resolver = resolver

    async def _query(
        self,
        name: str,
        rdtype: dns.rdatatype.RdataType,
        *,
        no_answer_ok: bool = False,
        nxdomain_ok: bool = False,
    ) -> dns.resolver.Answer | None:
        """The answer, or None for an empty one where allowed; any failure is `AcmeError(dns)`."""
        label = dns.rdatatype.to_text(rdtype)
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException:
            raise _dns_problem(f"{name!r} is not a valid DNS name") from None
        try:
            # search=False: the name is absolute; never append local search domains.
            return await self._resolver.resolve(qname, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            if nxdomain_ok:
                return None
            raise _dns_problem(
                f"NXDOMAIN looking up {label} for {name} - "
                "check that a DNS record exists for this domain"
            ) from None
        except dns.resolver.NoAnswer:
            if no_answer_ok:
                return None
            raise _dns_problem(f"No {label} records found for {name}") from None
        except dns.resolver.NoNameservers:
            raise _dns_problem(f"SERVFAIL looking up {label} for {name}") from None
        except dns.exception.Timeout:
            raise _dns_problem(f"query timed out looking up {label} for {name}") from None
        except (dns.exception.DNSException, OSError):
            raise _dns_problem(f"networking error looking up {label} for {name}") from None

    async def addresses(self, name: str) -> list[IPAddress]:
        # Both families at once; one failing is tolerated while the other
        # answers, as Boulder does.
        results = await asyncio.gather(
            self._addresses_of(name, dns.rdatatype.AAAA),
            self._addresses_of(name, dns.rdatatype.A),
            return_exceptions=True,
        )
        found: list[IPAddress] = []
        errors: list[AcmeError] = []
        for result in results:
            if isinstance(result, AcmeError):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                found.extend(result)
        if found:
            return found
        if errors:
            raise errors[-1]  # the A lookup's, when both failed
        raise _dns_problem(f"No valid IP addresses found for {name}")

    async def _addresses_of(self, name: str, rdtype: dns.rdatatype.RdataType) -> list[IPAddress]:
        answer = await self._query(name, rdtype, no_answer_ok=True)
        if answer is None:
            return []
        out: list[IPAddress] = []
        for rdata in list(answer)[: self._max_answers]:
            out.append(ipaddress.ip_address(rdata.address))
        return out

    async def txt(self, name: str) -> list[str]:
        answer = await self._query(name, dns.rdatatype.TXT)
        assert answer is not None
        # A TXT record is a sequence of character-strings; they are one value.
        return [
            b"".join(rdata.strings).decode("utf-8", errors="replace")
            for rdata in list(answer)[: self._max_answers]
        ]

    async def caa(self, name: str) -> list[tuple[int, str, str]]:
        # RFC 8659 §3: no CAA RRset (or no such name) is the ordinary case.
        answer = await self._query(name, dns.rdatatype.CAA, no_answer_ok=True, nxdomain_ok=True)
        if answer is None:
            return []
        return [
            (
                int(rdata.flags),
                rdata.tag.decode("ascii", errors="replace"),
                rdata.value.decode("utf-8", errors="replace"),
            )
            for rdata in list(answer)[: self._max_answers]
        ]

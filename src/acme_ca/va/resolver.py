"""The VA's one DNS resolver: address, TXT and CAA lookups.

`Resolver` is the narrow interface the challenge modules use, so tests may
hand in a fake; `DnsResolver` implements it, sending queries to the configured
recursive resolver (or the system's, from /etc/resolv.conf). Every failure
becomes `AcmeError(dns)` naming the queried name; nothing else is raised. It
does not judge addresses: that is `address_guard`'s job.

It is a small stub resolver over dnspython's wire format with the semantics of
dnspython's own (`dns.asyncresolver`), which cost too much CPU:

- One long-lived connected UDP socket per nameserver (and event loop), queries
  multiplexed on it by a fresh random 16-bit ID each (`secrets`). A datagram
  answers a query only if it comes from the nameserver's address, carries that
  query's ID and echoes its question (as `Message.is_response`); others are
  ignored. Truncated answers are asked again over TCP. Per-query source-port
  randomisation is traded for the long-lived socket: the resolver configured is
  a trusted recursive resolver on a private path (as Boulder's unbound is).
- A lookup is bounded by `dns_timeout`, each attempt by min(2 s, that), timeouts
  retried within it. A nameserver answering SERVFAIL (or another error, or
  garbage) is dropped for the lookup; with none left the lookup fails as SERVFAIL.
- UDP replies are read straight from their wire format (`dns_wire`), never built
  into a `dns.message.Message`. Answers follow CNAME chains in the response and
  are cached (`dns_cache`) by their TTL, negative ones by their SOA (RFC 2308), at
  most `dns_cache_max_ttl` seconds. Failures are never cached. One event loop at
  a time: moving to another closes the first's sockets.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
import struct
import time
import weakref
from typing import Any, Protocol

import dns.asyncquery
import dns.exception
import dns.flags
import dns.inet
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from acme_ca.errors import AcmeError, ProblemType
from acme_ca.va.dns_cache import NODATA, NXDOMAIN, Outcome, TtlCache
from acme_ca.va.dns_wire import HEADER_SIZE, Reply, read_answer, reply_to
from acme_ca.va.types import VAConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Nameserver = tuple[str, int]
"""(address, port) of a recursive resolver."""

_ATTEMPT_TIMEOUT = 2.0
# dnspython's backoff between rounds over all nameservers: 0.1 s, doubling, at most 2 s.
_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 2.0
# A query's header but for its ID: RD set, one question (dns.message.make_query's).
_QUERY_HEADER = struct.pack("!6H", 0, dns.flags.RD, 1, 0, 0, 0)
_MAX_DATAGRAM = 65535
_READS_PER_WAKEUP = 64


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


class _LookupFailed(Exception):
    """The lookup failed; the argument is the problem detail's template."""


_SERVFAIL = "SERVFAIL looking up {label} for {name}"
_TIMED_OUT = "query timed out looking up {label} for {name}"
_NETWORK = "networking error looking up {label} for {name}"


class _BadServerError(Exception):
    """This nameserver's response is unusable: drop it for the rest of the lookup."""


# As dnspython's resolver: these drop the nameserver for the lookup; other errors are retried.
_DROPS_SERVER = (_BadServerError, dns.exception.FormError, EOFError, OSError, NotImplementedError)


class DnsResolver:
    """`Resolver` over the configured nameserver, or the system's."""

    def __init__(self, config: VAConfig) -> None:
        self._max_answers = config.max_dns_answers
        self._lifetime = config.dns_timeout
        self._attempt_limit = min(_ATTEMPT_TIMEOUT, config.dns_timeout)
        self._edns = -1
        self._payload = 0
        self._rotate = False
        self._nameservers: tuple[Nameserver, ...]
        if config.dns_resolver is None:
            self._nameservers = self._system_nameservers()
        else:
            self._nameservers = (config.dns_resolver,)
        self._cache: TtlCache[tuple[bytes, int], Outcome] = TtlCache(
            max_ttl=config.dns_cache_max_ttl
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channels: dict[Nameserver, _UdpChannel] = {}
        weakref.finalize(self, _close_all, self._channels)

    def _system_nameservers(self) -> tuple[Nameserver, ...]:
        try:
            system = dns.resolver.Resolver(configure=True)
        except dns.resolver.NoResolverConfiguration:
            return ()  # every lookup fails as a dns problem; the constructor does not raise
        self._edns, self._payload, self._rotate = system.edns, system.payload, system.rotate
        found: list[Nameserver] = []
        for ns in system.nameservers:
            if isinstance(ns, dns.nameserver.Do53Nameserver):
                found.append((ns.address, ns.port))
            elif isinstance(ns, str) and dns.inet.is_address(ns):
                found.append((ns, system.nameserver_ports.get(ns, system.port)))
        return tuple(found)

    def close(self) -> None:
        """Close the sockets; a later lookup opens new ones."""
        _close_all(self._channels)

    async def _query(
        self,
        name: str,
        rdtype: dns.rdatatype.RdataType,
        *,
        no_answer_ok: bool = False,
        nxdomain_ok: bool = False,
    ) -> tuple[Any, ...]:
        """The answer's first `max_dns_answers` rdatas, () where allowed; else `AcmeError(dns)`."""
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException:
            raise _dns_problem(f"{name!r} is not a valid DNS name") from None
        label = dns.rdatatype.to_text(rdtype)
        try:
            outcome = await self._lookup(qname, rdtype)
        except _LookupFailed as exc:
            raise _dns_problem(str(exc).format(label=label, name=name)) from None
        except (dns.exception.DNSException, OSError):
            raise _dns_problem(_NETWORK.format(label=label, name=name)) from None
        if outcome.nxdomain:
            if nxdomain_ok:
                return ()
            raise _dns_problem(
                f"NXDOMAIN looking up {label} for {name} - "
                "check that a DNS record exists for this domain"
            )
        if not outcome.rdatas:
            if no_answer_ok:
                return ()
            raise _dns_problem(f"No {label} records found for {name}")
        return outcome.rdatas[: self._max_answers]

    async def _lookup(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> Outcome:
        name_wire = qname.to_wire()
        assert name_wire is not None
        cache = self._cache
        if not cache.enabled:
            return (await self._resolve(qname, name_wire, rdtype))[0]
        # Label bytes lowercased: DNS's (ASCII) case folding.
        key = (name_wire.lower(), int(rdtype))
        cached = cache.get(key)
        if cached is not None:
            return cached
        outcome, ttl = await self._resolve(qname, name_wire, rdtype)
        if ttl is not None:
            cache.put(key, outcome, ttl)
        return outcome

    async def _resolve(
        self, qname: dns.name.Name, name_wire: bytes, rdtype: dns.rdatatype.RdataType
    ) -> tuple[Outcome, float | None]:
        """Ask the nameservers until one answers; the outcome and how long it may be cached."""
        nameservers = list(self._nameservers)
        if self._rotate:
            secrets.SystemRandom().shuffle(nameservers)
        qtail = struct.pack("!HH", rdtype, dns.rdataclass.IN)
        if self._edns < 0:
            # make_query(qname, rdtype).to_wire(), its ID zero, without building a Message.
            wire = _QUERY_HEADER + name_wire + qtail
        else:
            wire = self._make_query(qname, rdtype).to_wire()
        question = name_wire.lower() + qtail
        deadline = time.monotonic() + self._lifetime
        current = list(nameservers)
        backoff = _FIRST_BACKOFF
        while True:
            if not current:
                if not nameservers:
                    raise _LookupFailed(_SERVFAIL)
                current = list(nameservers)
                await asyncio.sleep(max(0.0, min(backoff, deadline - time.monotonic())))
                backoff = min(backoff * 2, _MAX_BACKOFF)
            server = current.pop(0)
            try:
                reply = await self._channel(server).exchange(
                    wire, question, qname, rdtype, self._attempt_timeout(deadline)
                )
                if reply is None:
                    continue  # this attempt timed out
                if reply[0] & dns.flags.TC:
                    # RFC 7766 §5: a truncated answer is asked again over TCP.
                    query = self._make_query(qname, rdtype)
                    response = await dns.asyncquery.tcp(
                        query, server[0], timeout=self._attempt_timeout(deadline), port=server[1]
                    )
                    tcp_wire = response.wire or response.to_wire()  # as from_wire saw it
                    reply = int(response.flags), read_answer(tcp_wire, qname, rdtype)
                return _interpret(reply)
            except _LookupFailed:
                raise
            except _DROPS_SERVER:
                nameservers.remove(server)
            except Exception:  # noqa: S112 - a timeout, a host name for an address, ...
                continue

    def _make_query(
        self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> dns.message.QueryMessage:
        query = dns.message.make_query(qname, rdtype)
        if self._edns >= 0:
            query.use_edns(self._edns, 0, self._payload)
        return query

    def _attempt_timeout(self, deadline: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _LookupFailed(_TIMED_OUT)
        return min(remaining, self._attempt_limit)

    def _channel(self, server: Nameserver) -> _UdpChannel:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            _close_all(self._channels)
            self._loop = loop
        channel = self._channels.get(server)
        if channel is None or channel.closed:
            channel = self._channels[server] = _UdpChannel(loop, server)
        return channel

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
        rdatas = await self._query(name, rdtype, no_answer_ok=True)
        return [ipaddress.ip_address(rdata.address) for rdata in rdatas]

    async def txt(self, name: str) -> list[str]:
        rdatas = await self._query(name, dns.rdatatype.TXT)
        # A TXT record is a sequence of character-strings; they are one value.
        return [b"".join(rdata.strings).decode("utf-8", errors="replace") for rdata in rdatas]

    async def caa(self, name: str) -> list[tuple[int, str, str]]:
        # RFC 8659 §3: no CAA RRset (or no such name) is the ordinary case.
        rdatas = await self._query(name, dns.rdatatype.CAA, no_answer_ok=True, nxdomain_ok=True)
        return [
            (
                int(rdata.flags),
                rdata.tag.decode("ascii", errors="replace"),
                rdata.value.decode("utf-8", errors="replace"),
            )
            for rdata in rdatas
        ]


def _interpret(reply: Reply) -> tuple[Outcome, float | None]:
    flags, answer = reply
    rcode = flags & 0xF if answer is None else answer.rcode
    if rcode == dns.rcode.YXDOMAIN:
        raise _LookupFailed(_NETWORK)
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        raise _BadServerError  # SERVFAIL, REFUSED, ...: dnspython drops the nameserver
    if answer is None:  # no records at all: nothing to follow, no SOA to cache it by
        return NXDOMAIN if rcode == dns.rcode.NXDOMAIN else NODATA, None
    if answer.outcome is None:  # a CNAME chain too long, an answer with NXDOMAIN
        raise _BadServerError
    return answer.outcome, answer.ttl


def _expire(future: asyncio.Future[Reply | None]) -> None:
    if not future.done():
        future.set_result(None)


class _UdpChannel:
    """A connected UDP socket to one nameserver, its queries told apart by message ID."""

    def __init__(self, loop: asyncio.AbstractEventLoop, server: Nameserver) -> None:
        host, port = server
        # ValueError for a host name: dnspython needs an address too (and retries).
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((host, port))
            self._peer = sock.getpeername()[:2]
            loop.add_reader(sock.fileno(), self._readable)
        except BaseException:
            sock.close()
            raise
        self._loop = loop
        self._sock = sock
        # ID -> (question section, name lowercased; its name; its type; the reply's future)
        self._pending: dict[
            int, tuple[bytes, dns.name.Name, int, asyncio.Future[Reply | None]]
        ] = {}
        self.closed = False

    async def exchange(
        self, wire: bytes, question: bytes, qname: dns.name.Name, rdtype: int, limit: float
    ) -> Reply | None:
        """Send `wire` under a fresh ID; the reply echoing `question` (its question section,
        name lowercased), read for (`qname`, `rdtype`), or None after `limit` seconds."""
        pending = self._pending
        if len(pending) >= 0xFFFF:
            raise OSError("no free DNS message ID")
        qid = secrets.randbits(16)
        while qid in pending:
            qid = secrets.randbits(16)
        future: asyncio.Future[Reply | None] = self._loop.create_future()
        pending[qid] = (question, qname, rdtype, future)
        timer = self._loop.call_later(limit, _expire, future)
        try:
            self._send(qid.to_bytes(2, "big") + wire[2:])
            return await future
        finally:
            timer.cancel()
            pending.pop(qid, None)

    def _send(self, data: bytes) -> None:
        for _ in range(2):
            try:
                self._sock.send(data)
            except BlockingIOError:
                return  # send buffer full: as good as lost; the attempt times out
            except ConnectionRefusedError:
                continue  # an ICMP error about an earlier datagram, reported late
            return

    def _readable(self) -> None:
        for _ in range(_READS_PER_WAKEUP):
            try:
                data, addr = self._sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # ICMP errors (port unreachable): what counts is that no answer came,
                # as for dnspython's unconnected sockets, which never see them.
                continue
            if addr[:2] != self._peer or len(data) < HEADER_SIZE:
                continue
            entry = self._pending.get(int.from_bytes(data[:2], "big"))
            if entry is None or entry[3].done():
                continue
            reply = reply_to(entry[0], entry[1], entry[2], data)
            if reply is not None:
                entry[3].set_result(reply)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
            for *_, future in self._pending.values():
                _expire(future)  # its attempt times out; a retry opens a new socket
        self._pending.clear()
        self._sock.close()


def _close_all(channels: dict[Nameserver, _UdpChannel]) -> None:
    for channel in channels.values():
        channel.close()
    channels.clear()

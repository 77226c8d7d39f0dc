"""A small authoritative-looking DNS server answering from an in-memory record store.

It answers every name it is asked about: A from explicit records or a default address, AAAA,
TXT and CAA from records that were set, SERVFAIL on request. It is a test double for the
resolver the validation authority queries, not a general DNS server: no recursion, no zones,
no CNAME chasing, no DNSSEC. Loopback use is the intent; it never sends to anyone but the
client that asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CAA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset

__all__ = ["DnsRecords", "DnsServer", "normalize_host"]

_log = logging.getLogger(__name__)

# Zero TTL: records change between test steps, and nothing downstream should cache them.
_TTL = 0
# RFC 1035 §4.2.1: 512 bytes over UDP without EDNS; with EDNS we honour the client's payload
# size up to 1232, the value DNS Flag Day 2020 settled on to avoid IP fragmentation.
_UDP_MIN_PAYLOAD = 512
_UDP_MAX_PAYLOAD = 1232
# A query is one question plus an OPT record; anything larger is not a query we serve.
_MAX_QUERY_SIZE = 4096
# RFC 1035 §4.2.2: the two-octet length prefix bounds a TCP message.
_TCP_MAX_MESSAGE = 65535
# RFC 1035 §3.3.14: one character-string holds at most 255 octets.
_TXT_CHUNK = 255
_HEADER_SIZE = 12

# dnspython's A, AAAA and CAA constructors carry no annotations; type them once here.
_A: Callable[..., dns.rdata.Rdata] = dns.rdtypes.IN.A.A
_AAAA: Callable[..., dns.rdata.Rdata] = dns.rdtypes.IN.AAAA.AAAA
_CAA: Callable[..., dns.rdata.Rdata] = dns.rdtypes.ANY.CAA.CAA


def normalize_host(host: str) -> dns.name.Name:
    """The absolute DNS name for ``host``, given with or without the trailing dot.

    dnspython compares and hashes names case-insensitively, so the result is the lookup key.
    Raises ValueError for an empty or malformed name.
    """
    text = host.strip()
    if not text or text == ".":
        raise ValueError("host must be a non-empty DNS name")
    try:
        return dns.name.from_text(text)
    except (dns.exception.DNSException, UnicodeError) as exc:
        raise ValueError(f"invalid host {host!r}: {exc}") from exc


class DnsRecords:
    """The mutable record store the DNS server answers from.

    Adding appends (several A, TXT or CAA values per name are normal: certbot puts two TXT
    values at one name for a wildcard plus its base name); clearing removes all of one kind.
    Every method raises ValueError for a malformed host, address or policy, before changing
    anything.
    """

    def __init__(
        self, *, default_ipv4: str | None = "127.0.0.1", default_ipv6: str | None = None
    ) -> None:
        self._default_ipv4: ipaddress.IPv4Address | None = None
        self._default_ipv6: ipaddress.IPv6Address | None = None
        self._a: dict[dns.name.Name, list[ipaddress.IPv4Address]] = {}
        self._aaaa: dict[dns.name.Name, list[ipaddress.IPv6Address]] = {}
        self._txt: dict[dns.name.Name, list[str]] = {}
        self._caa: dict[dns.name.Name, list[dns.rdata.Rdata]] = {}
        self._servfail: set[dns.name.Name] = set()
        self.set_default_ipv4(default_ipv4)
        self.set_default_ipv6(default_ipv6)

    def set_default_ipv4(self, ip: str | None) -> None:
        """The A answer for names without explicit A records; None or "" answers none."""
        self._default_ipv4 = ipaddress.IPv4Address(ip) if ip else None

    def set_default_ipv6(self, ip: str | None) -> None:
        """The AAAA answer for names without explicit AAAA records; None or "" answers none."""
        self._default_ipv6 = ipaddress.IPv6Address(ip) if ip else None

    def add_a(self, host: str, addresses: Sequence[str]) -> None:
        name = normalize_host(host)
        parsed = [ipaddress.IPv4Address(a) for a in _address_list(addresses)]
        self._a.setdefault(name, []).extend(parsed)

    def clear_a(self, host: str) -> None:
        self._a.pop(normalize_host(host), None)

    def add_aaaa(self, host: str, addresses: Sequence[str]) -> None:
        name = normalize_host(host)
        parsed = [ipaddress.IPv6Address(a) for a in _address_list(addresses)]
        self._aaaa.setdefault(name, []).extend(parsed)

    def clear_aaaa(self, host: str) -> None:
        self._aaaa.pop(normalize_host(host), None)

    def set_txt(self, host: str, value: str) -> None:
        """Append one TXT value at ``host`` (RFC 8555 §8.4 puts the digest at _acme-challenge)."""
        name = normalize_host(host)
        if not isinstance(value, str):
            raise ValueError("TXT value must be a string")
        value.encode()  # a lone surrogate would fail only when answering; fail here instead
        self._txt.setdefault(name, []).append(value)

    def clear_txt(self, host: str) -> None:
        self._txt.pop(normalize_host(host), None)

    def add_caa(self, host: str, policies: Iterable[tuple[int, str, str]]) -> None:
        """Append CAA records (RFC 8659 §4.1): each policy is (flags, tag, value)."""
        name = normalize_host(host)
        rdatas = [_caa_rdata(flags, tag, value) for flags, tag, value in policies]
        self._caa.setdefault(name, []).extend(rdatas)

    def clear_caa(self, host: str) -> None:
        self._caa.pop(normalize_host(host), None)

    def set_servfail(self, host: str) -> None:
        """Answer SERVFAIL for every query about ``host`` until cleared."""
        self._servfail.add(normalize_host(host))

    def clear_servfail(self, host: str) -> None:
        self._servfail.discard(normalize_host(host))

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        """The response to one parsed query; never raises for a well-formed message."""
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if query.edns > 0:
            # RFC 6891 §6.1.3: only EDNS version 0 exists.
            response.set_rcode(dns.rcode.BADVERS)
            return response
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response
        if len(query.question) != 1:
            # RFC 9619: a query carries exactly one question.
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        if question.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        if question.name in self._servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        rdatas = self._rdatas(question.name, question.rdtype)
        if rdatas:
            response.answer.append(dns.rrset.from_rdata_list(question.name, _TTL, rdatas))
        return response

    def _rdatas(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> list[dns.rdata.Rdata]:
        in_ = dns.rdataclass.IN
        if rdtype == dns.rdatatype.A:
            v4 = self._a.get(name) or ([self._default_ipv4] if self._default_ipv4 else [])
            return [_A(in_, rdtype, str(ip)) for ip in v4]
        if rdtype == dns.rdatatype.AAAA:
            v6 = self._aaaa.get(name) or ([self._default_ipv6] if self._default_ipv6 else [])
            return [_AAAA(in_, rdtype, str(ip)) for ip in v6]
        if rdtype == dns.rdatatype.TXT:
            return [
                dns.rdtypes.ANY.TXT.TXT(in_, rdtype, _txt_strings(v))
                for v in self._txt.get(name, [])
            ]
        if rdtype == dns.rdatatype.CAA:
            return list(self._caa.get(name, []))
        return []


def _address_list(addresses: Sequence[str]) -> Sequence[str]:
    if isinstance(addresses, str) or not all(isinstance(a, str) for a in addresses):
        raise ValueError("addresses must be a list of strings")
    return addresses


def _txt_strings(value: str) -> list[bytes]:
    # RFC 7208 §3.3 style: a long value is split into 255-octet strings that readers concatenate.
    raw = value.encode()
    return [raw[i : i + _TXT_CHUNK] for i in range(0, len(raw), _TXT_CHUNK)] or [b""]


def _caa_rdata(flags: int, tag: str, value: str) -> dns.rdata.Rdata:
    if not isinstance(flags, int) or isinstance(flags, bool) or not 0 <= flags <= 255:
        raise ValueError("CAA flags must be an integer 0..255")
    if not isinstance(tag, str) or not isinstance(value, str):
        raise ValueError("CAA tag and value must be strings")
    # RFC 8659 §4.1: the tag is ASCII letters and digits, at least 1 octet ("SHOULD" be at
    # most 15: longer ones are served, so a VA's handling of them can be tested).
    if not (1 <= len(tag) <= 255 and tag.isascii() and tag.isalnum()):
        raise ValueError(f"invalid CAA tag {tag!r}")
    return _CAA(dns.rdataclass.IN, dns.rdatatype.CAA, flags, tag.encode(), value.encode())


def _formerr_for(wire: bytes) -> bytes | None:
    """A FORMERR reply echoing the id of an unparseable query, or None if it is no query."""
    if len(wire) < _HEADER_SIZE:
        return None
    msg_id, flags = struct.unpack("!HH", wire[:4])
    if flags & dns.flags.QR:
        return None  # never answer a response: two servers could loop
    reply = dns.message.Message(id=msg_id)
    reply.flags = dns.flags.QR
    reply.set_rcode(dns.rcode.FORMERR)
    return reply.to_wire()


def _respond(records: DnsRecords, wire: bytes, *, udp: bool) -> bytes | None:
    """The wire reply to ``wire``, or None when it deserves none; over UDP big answers truncate."""
    if len(wire) > _MAX_QUERY_SIZE:
        return None
    try:
        query = dns.message.from_wire(wire)
    except Exception:  # any undecodable input is a format error, not a crash
        return _formerr_for(wire)
    if query.flags & dns.flags.QR:
        return None
    response = records.answer(query)
    if not udp:
        # Explicit: dnspython would otherwise cap a TCP reply at the query's EDNS payload size.
        return response.to_wire(max_size=_TCP_MAX_MESSAGE, prefer_truncation=True)
    limit = _UDP_MIN_PAYLOAD
    if query.edns >= 0:
        limit = max(_UDP_MIN_PAYLOAD, min(query.payload, _UDP_MAX_PAYLOAD))
    # RFC 1035 §4.2.1, RFC 7766 §5: set TC so the client retries over TCP.
    return response.to_wire(max_size=limit, prefer_truncation=True)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, records: DnsRecords) -> None:
        self._records = records
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's selector transport does not subclass DatagramTransport; it behaves as one.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = _respond(self._records, data, udp=True)
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        _log.debug("DNS UDP error: %s", exc)


class DnsServer:
    """DNS over UDP and TCP on one address and port, answering from ``records``.

    With port 0 the UDP socket takes an ephemeral port and TCP binds the same one.
    TCP connections are bounded in number and closed after ``tcp_idle_timeout`` seconds
    without a complete query (RFC 7766 §6.2.3).
    """

    def __init__(
        self,
        records: DnsRecords,
        *,
        listen: tuple[str, int],
        tcp_idle_timeout: float = 10.0,
        max_tcp_connections: int = 128,
    ) -> None:
        self._records = records
        self._listen = listen
        self._tcp_idle_timeout = tcp_idle_timeout
        self._max_tcp_connections = max_tcp_connections
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("DNS server is not running")
        return self._port

    async def start(self) -> None:
        if self._port is not None:
            raise RuntimeError("DNS server already started")
        host, port = self._listen
        loop = asyncio.get_running_loop()
        # An ephemeral UDP port may be taken on TCP by someone else; try a few.
        attempts = 5 if port == 0 else 1
        for attempt in range(attempts):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self._records), local_addr=(host, port)
            )
            bound = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(
                    self._serve_tcp, host, bound, reuse_address=True, limit=_MAX_QUERY_SIZE + 2
                )
            except OSError:
                transport.close()
                if attempt == attempts - 1:
                    raise
                continue
            self._udp = transport
            self._port = bound
            return

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tcp.wait_closed(), timeout=5.0)
            self._tcp = None
        self._port = None

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= self._max_tcp_connections:
            writer.close()
            return
        self._writers.add(writer)
        try:
            while True:
                # RFC 1035 §4.2.2: each message is preceded by a two-octet length.
                async with asyncio.timeout(self._tcp_idle_timeout):
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    if length > _MAX_QUERY_SIZE:
                        return
                    wire = await reader.readexactly(length)
                reply = _respond(self._records, wire, udp=False)
                if reply is None:
                    return
                writer.write(struct.pack("!H", len(reply)) + reply)
                async with asyncio.timeout(self._tcp_idle_timeout):
                    await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout=1.0)

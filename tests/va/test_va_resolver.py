"""DnsResolver's transport and cache, against scripted loopback DNS servers.

The scripted server answers each query through a handler returning the datagrams
to send (so it can send wrong IDs, wrong questions, garbage, or nothing), and
optionally serves TCP on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import secrets
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest

import acme_ca.va.resolver as resolver_module
from acme_ca.errors import AcmeError, ProblemType
from acme_ca.testing.dns_server import DnsRecords
from acme_ca.testing.dns_server import DnsServer as ChallengeDnsServer
from acme_ca.va import DnsResolver, VAConfig
from acme_ca.va.dns_cache import TtlCache

LOOPBACK = "127.0.0.1"
Handler = Callable[[dns.message.Message], list[bytes]]


class ScriptedServer(asyncio.DatagramProtocol):
    """UDP (and optionally TCP) on one loopback port; `handler` decides each reply."""

    def __init__(
        self, handler: Handler, tcp_handler: Handler | None = None, *, port: int = 0
    ) -> None:
        self.handler = handler
        self._bind_port = port
        self.tcp_handler = tcp_handler
        self.queries: list[dns.message.Message] = []
        self.sources: list[tuple[str, int]] = []
        self.tcp_queries = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._transport is not None
        return int(self._transport.get_extra_info("sockname")[1])

    def config(self, *, timeout: float = 2.0, **kw: Any) -> VAConfig:
        return VAConfig(dns_resolver=(LOOPBACK, self.port), dns_timeout=timeout, **kw)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        query = dns.message.from_wire(data)
        self.queries.append(query)
        self.sources.append((str(addr[0]), addr[1]))
        assert self._transport is not None
        for reply in self.handler(query):
            self._transport.sendto(reply, addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.tcp_handler is not None
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            query = dns.message.from_wire(await reader.readexactly(length))
            self.tcp_queries += 1
            for reply in self.tcp_handler(query):
                writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
        writer.close()

    async def __aenter__(self) -> ScriptedServer:
        loop = asyncio.get_running_loop()
        for attempt in range(20):
            await loop.create_datagram_endpoint(
                lambda: self, local_addr=(LOOPBACK, self._bind_port)
            )
            if self.tcp_handler is None:
                return self
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, LOOPBACK, self.port)
            except OSError as exc:
                # The UDP port the kernel chose may be some outgoing connection's TCP
                # port: close it and let the kernel choose again.
                assert self._transport is not None
                self._transport.close()
                if exc.errno != errno.EADDRINUSE or self._bind_port or attempt == 19:
                    raise
                continue
            return self
        raise AssertionError("unreachable")

    async def __aexit__(self, *exc: object) -> None:
        assert self._transport is not None
        self._transport.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()


def reply(
    query: dns.message.Message,
    *records: tuple[str, int, str, str],
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
    authority: tuple[tuple[str, int, str, str], ...] = (),
) -> dns.message.Message:
    """A response to `query` with (name, ttl, type, rdata text) records."""
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    for name, ttl, rdtype, text in records:
        response.answer.append(dns.rrset.from_text(name, ttl, "IN", rdtype, text))
    for name, ttl, rdtype, text in authority:
        response.authority.append(dns.rrset.from_text(name, ttl, "IN", rdtype, text))
    return response


def a_record(ttl: int = 300) -> Handler:
    """Every query answered with one record of its type, owned by its name, with `ttl`."""
    texts = {
        dns.rdatatype.A: "192.0.2.1",
        dns.rdatatype.TXT: '"v"',
        dns.rdatatype.CAA: '0 issue "ca"',
    }

    def handle(query: dns.message.Message) -> list[bytes]:
        q = query.question[0]
        if q.rdtype not in texts:
            return [reply(query).to_wire()]
        name = q.name.to_text()
        return [
            reply(query, (name, ttl, dns.rdatatype.to_text(q.rdtype), texts[q.rdtype])).to_wire()
        ]

    return handle


SOA = ("example.", 300, "SOA", "ns.example. host.example. 1 3600 600 86400 60")


@pytest.fixture
async def counting() -> AsyncIterator[ScriptedServer]:
    async with ScriptedServer(a_record()) as server:
        yield server


# ---- matching replies to queries -------------------------------------------------------


async def test_wrong_id_wrong_question_and_garbage_are_ignored() -> None:
    def handle(query: dns.message.Message) -> list[bytes]:
        good = reply(query, ("host.example.", 60, "A", "192.0.2.7"))
        wrong_id = reply(query, ("host.example.", 60, "A", "192.0.2.66"))
        wrong_id.id = (query.id + 1) % 65536
        other = dns.message.make_query("other.example", "A")
        other.id = query.id
        wrong_question = reply(other, ("other.example.", 60, "A", "192.0.2.66"))
        not_a_response = dns.message.make_query("host.example", "A")
        not_a_response.id = query.id
        garbage = query.id.to_bytes(2, "big") + b"\x81\x80junk"
        return [
            wrong_id.to_wire(),
            wrong_question.to_wire(),
            not_a_response.to_wire(),
            garbage,
            good.to_wire(),
        ]

    async with ScriptedServer(handle) as server:
        addresses = await DnsResolver(server.config()).addresses("host.example")
    assert [str(a) for a in addresses] == ["192.0.2.7"]


async def test_only_mismatched_replies_time_out() -> None:
    def handle(query: dns.message.Message) -> list[bytes]:
        other = dns.message.make_query("other.example", "TXT")
        other.id = query.id
        return [reply(other, ("other.example.", 60, "TXT", '"x"')).to_wire()]

    async with ScriptedServer(handle) as server:
        with pytest.raises(AcmeError) as info:
            await DnsResolver(server.config(timeout=0.3)).txt("host.example")
    assert info.value.type == ProblemType.DNS
    assert info.value.detail == "query timed out looking up TXT for host.example"


async def test_question_is_matched_case_insensitively() -> None:
    def handle(query: dns.message.Message) -> list[bytes]:
        upper = dns.message.make_query("HOST.Example", "TXT")
        upper.id = query.id
        return [reply(upper, ("HOST.Example.", 60, "TXT", '"yes"')).to_wire()]

    async with ScriptedServer(handle) as server:
        assert await DnsResolver(server.config()).txt("host.example") == ["yes"]


async def test_concurrent_queries_share_one_socket_with_distinct_ids(
    counting: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids: Iterator[int] = itertools.chain([7, 7, 7, 9], itertools.count(100))
    monkeypatch.setattr(secrets, "randbits", lambda _bits: next(ids))
    resolver = DnsResolver(counting.config())
    names = [f"n{i}.example" for i in range(20)]
    results = await asyncio.gather(*(resolver.txt(n) for n in names))
    assert results == [["v"]] * 20
    assert [q.id for q in counting.queries[:2]] == [7, 9]  # 7 was in flight: not reused
    assert len({q.id for q in counting.queries}) == 20
    assert len(set(counting.sources)) == 1
    resolver.close()


async def test_truncated_reply_is_asked_again_over_tcp() -> None:
    records = [f"v{i:02d}-" + "x" * 40 for i in range(30)]

    def udp(query: dns.message.Message) -> list[bytes]:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.TC
        return [response.to_wire()]

    def tcp(query: dns.message.Message) -> list[bytes]:
        response = dns.message.make_response(query)
        texts = [f'"{r}"' for r in records]
        response.answer.append(
            dns.rrset.from_text_list(query.question[0].name, 60, "IN", "TXT", texts)
        )
        return [response.to_wire()]

    async with ScriptedServer(udp, tcp) as server:
        found = await DnsResolver(server.config()).txt("big.example")
    assert sorted(found) == records
    assert server.tcp_queries == 1


async def test_truncation_fallback_against_the_challenge_server() -> None:
    records = DnsRecords()
    values = [f"{i:02d}" + "y" * 60 for i in range(20)]  # well over 512 bytes
    for value in values:
        records.set_txt("big.example", value)
    server = ChallengeDnsServer(records, listen=(LOOPBACK, 0))
    await server.start()
    try:
        config = VAConfig(dns_resolver=(LOOPBACK, server.port), dns_timeout=2.0)
        assert sorted(await DnsResolver(config).txt("big.example")) == values
    finally:
        await server.stop()


# ---- answers: CNAMEs, rcodes, retries ---------------------------------------------------


async def test_cname_chain_is_followed() -> None:
    def handle(query: dns.message.Message) -> list[bytes]:
        if query.question[0].rdtype != dns.rdatatype.A:
            return [reply(query, ("www.example.", 60, "CNAME", "web.example.")).to_wire()]
        return [
            reply(
                query,
                ("www.example.", 60, "CNAME", "web.example."),
                ("web.example.", 60, "CNAME", "host.example."),
                ("host.example.", 60, "A", "192.0.2.9"),
                ("unrelated.example.", 60, "A", "192.0.2.66"),
            ).to_wire()
        ]

    async with ScriptedServer(handle) as server:
        addresses = await DnsResolver(server.config()).addresses("www.example")
    assert [str(a) for a in addresses] == ["192.0.2.9"]


async def test_cname_loop_is_a_servfail() -> None:
    def handle(query: dns.message.Message) -> list[bytes]:
        return [
            reply(
                query,
                ("a.example.", 60, "CNAME", "b.example."),
                ("b.example.", 60, "CNAME", "a.example."),
            ).to_wire()
        ]

    async with ScriptedServer(handle) as server:
        with pytest.raises(AcmeError) as info:
            await DnsResolver(server.config()).txt("a.example")
    assert info.value.detail == "SERVFAIL looking up TXT for a.example"


async def test_refused_and_yxdomain_details() -> None:
    rcodes = {"refused.example.": dns.rcode.REFUSED, "yx.example.": dns.rcode.YXDOMAIN}

    def handle(query: dns.message.Message) -> list[bytes]:
        return [reply(query, rcode=rcodes[query.question[0].name.to_text()]).to_wire()]

    async with ScriptedServer(handle) as server:
        resolver = DnsResolver(server.config())
        with pytest.raises(AcmeError) as info:
            await resolver.txt("refused.example")
        assert info.value.detail == "SERVFAIL looking up TXT for refused.example"
        with pytest.raises(AcmeError) as info:
            await resolver.txt("yx.example")
        assert info.value.detail == "networking error looking up TXT for yx.example"


async def test_a_lost_query_is_retried_within_the_lifetime() -> None:
    seen = 0

    def handle(query: dns.message.Message) -> list[bytes]:
        nonlocal seen
        seen += 1
        return [] if seen == 1 else a_record()(query)

    async with ScriptedServer(handle) as server:
        # Attempts last min(2 s, dns_timeout): a second one fits in 2.5 s.
        assert await DnsResolver(server.config(timeout=2.5)).txt("lossy.example") == ["v"]
    assert seen == 2


async def test_no_resolver_configuration_fails_every_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unreadable(self: object, f: object) -> None:
        raise dns.resolver.NoResolverConfiguration

    monkeypatch.setattr(dns.resolver.BaseResolver, "read_resolv_conf", unreadable)
    resolver = DnsResolver(VAConfig())
    with pytest.raises(AcmeError) as info:
        await resolver.txt("example.com")
    assert info.value.type == ProblemType.DNS
    assert info.value.detail == "SERVFAIL looking up TXT for example.com"


async def test_system_configuration_is_used(
    counting: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def configured(self: dns.resolver.BaseResolver, f: object) -> None:
        self.nameservers = [LOOPBACK]
        self.nameserver_ports = {LOOPBACK: counting.port}

    monkeypatch.setattr(dns.resolver.BaseResolver, "read_resolv_conf", configured)
    assert await DnsResolver(VAConfig(dns_timeout=2.0)).txt("sys.example") == ["v"]
    assert len(counting.queries) == 1


def test_a_resolver_moves_between_event_loops() -> None:
    resolver: DnsResolver | None = None
    port = 0

    async def once() -> list[str]:
        nonlocal resolver, port
        # The server lives in the loop; the second one takes the first one's port.
        async with ScriptedServer(a_record(ttl=0), port=port) as server:
            port = server.port
            resolver = resolver or DnsResolver(server.config())
            return await resolver.txt("loop.example")

    assert asyncio.run(once()) == ["v"]
    assert asyncio.run(once()) == ["v"]
    assert resolver is not None
    resolver.close()


# ---- reading replies from the wire ----------------------------------------------------


async def test_soa_only_nodata_is_read_without_building_a_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As Pebble's challtestsrv: NODATA carrying an SOA (here, of the name's zone).
    def handle(query: dns.message.Message) -> list[bytes]:
        if query.question[0].rdtype == dns.rdatatype.A:
            return [
                reply(query, ("host.example.", 300, "A", "192.0.2.1"), authority=(SOA,)).to_wire()
            ]
        return [reply(query, authority=(SOA,)).to_wire()]

    from_wire = dns.message.from_wire

    def queries_only(wire: bytes, **kwargs: Any) -> dns.message.Message:
        assert not wire[2] & 0x80, "a response built into a Message"
        return from_wire(wire, **kwargs)

    monkeypatch.setattr(dns.message, "from_wire", queries_only)
    stored: list[tuple[Any, float]] = []
    put = TtlCache.put

    def recording(self: TtlCache[Any, Any], key: Any, value: object, ttl: float) -> None:
        stored.append((key, ttl))
        put(self, key, value, ttl)

    monkeypatch.setattr(TtlCache, "put", recording)
    async with ScriptedServer(handle) as server:
        resolver = DnsResolver(server.config())
        assert [str(a) for a in await resolver.addresses("host.example")] == ["192.0.2.1"]
        assert await resolver.caa("host.example") == []
        assert await resolver.caa("host.example") == []  # cached
    assert len(server.queries) == 3
    # A by its TTL; AAAA and CAA NODATA by min(SOA TTL 300, MINIMUM 60) (RFC 2308 §5).
    assert sorted((key[1], ttl) for key, ttl in stored) == [(1, 300), (28, 60), (257, 60)]


async def test_a_reply_with_a_garbage_rdlength_is_ignored() -> None:
    def handle(query: dns.message.Message) -> list[bytes]:
        good = reply(query, ("host.example.", 60, "A", "192.0.2.7")).to_wire()
        at = good.index(bytes([192, 0, 2, 7])) - 2  # the A record's RDLENGTH
        overrun = good[:at] + struct.pack("!H", 200) + good[at + 2 :]
        short = good[:at] + struct.pack("!H", 3) + good[at + 2 :]
        return [overrun, short, good[:-1], good + b"\0", good]

    async with ScriptedServer(handle) as server:
        addresses = await DnsResolver(server.config()).addresses("host.example")
    assert [str(a) for a in addresses] == ["192.0.2.7"]


async def test_edns_queries_and_extended_rcodes(monkeypatch: pytest.MonkeyPatch) -> None:
    def handle(query: dns.message.Message) -> list[bytes]:
        assert query.edns == 0
        name = query.question[0].name.to_text()
        response = reply(query, ("ok.example.", 60, "TXT", '"edns"'))
        if name == "badvers.example.":
            response = reply(query)
            response.set_rcode(dns.rcode.BADVERS)  # in the OPT record's TTL
        return [response.to_wire()]

    async with ScriptedServer(handle) as server:

        def configured(self: dns.resolver.BaseResolver, f: object) -> None:
            self.nameservers = [LOOPBACK]
            self.nameserver_ports = {LOOPBACK: server.port}
            self.use_edns(0, 0, 1232)

        monkeypatch.setattr(dns.resolver.BaseResolver, "read_resolv_conf", configured)
        resolver = DnsResolver(VAConfig(dns_timeout=2.0))
        assert await resolver.txt("ok.example") == ["edns"]
        with pytest.raises(AcmeError) as info:
            await resolver.txt("badvers.example")
        assert info.value.detail == "SERVFAIL looking up TXT for badvers.example"


# ---- the cache -------------------------------------------------------------------------


async def test_answer_is_cached_within_its_ttl(counting: ScriptedServer) -> None:
    resolver = DnsResolver(counting.config())
    assert await resolver.txt("cached.example") == ["v"]
    assert await resolver.txt("CACHED.example.") == ["v"]
    assert await resolver.caa("cached.example") == [(0, "issue", "ca")]
    assert len(counting.queries) == 2  # TXT once, CAA once


async def test_zero_ttl_is_not_cached() -> None:
    async with ScriptedServer(a_record(ttl=0)) as server:
        resolver = DnsResolver(server.config())
        await resolver.txt("fresh.example")
        await resolver.txt("fresh.example")
    assert len(server.queries) == 2


async def test_max_ttl_zero_disables_the_cache(counting: ScriptedServer) -> None:
    resolver = DnsResolver(counting.config(dns_cache_max_ttl=0))
    await resolver.txt("uncached.example")
    await resolver.txt("uncached.example")
    assert len(counting.queries) == 2


async def test_max_ttl_caps_a_long_ttl(counting: ScriptedServer) -> None:
    resolver = DnsResolver(counting.config(dns_cache_max_ttl=0.2))
    await resolver.txt("capped.example")
    await resolver.txt("capped.example")
    assert len(counting.queries) == 1
    await asyncio.sleep(0.3)
    await resolver.txt("capped.example")
    assert len(counting.queries) == 2


async def test_servfail_and_timeouts_are_not_cached() -> None:
    answers = iter(["servfail", "silent", "ok"])

    def handle(query: dns.message.Message) -> list[bytes]:
        what = next(answers)
        if what == "servfail":
            return [reply(query, rcode=dns.rcode.SERVFAIL).to_wire()]
        return [] if what == "silent" else a_record()(query)

    async with ScriptedServer(handle) as server:
        resolver = DnsResolver(server.config(timeout=0.3))
        with pytest.raises(AcmeError) as info:
            await resolver.txt("flaky.example")
        assert info.value.detail == "SERVFAIL looking up TXT for flaky.example"
        with pytest.raises(AcmeError) as info:
            await resolver.txt("flaky.example")
        assert info.value.detail == "query timed out looking up TXT for flaky.example"
        assert await resolver.txt("flaky.example") == ["v"]
    assert len(server.queries) == 3


async def test_negative_answers_are_cached_by_their_soa() -> None:
    def handle(query: dns.message.Message) -> list[bytes]:
        name = query.question[0].name.to_text()
        if name.startswith("soa-nx."):
            return [reply(query, rcode=dns.rcode.NXDOMAIN, authority=(SOA,)).to_wire()]
        if name.startswith("soa-nodata."):
            return [reply(query, authority=(SOA,)).to_wire()]
        if name.startswith("zero-soa."):
            zero = (SOA[0], 0, SOA[2], SOA[3])
            return [reply(query, rcode=dns.rcode.NXDOMAIN, authority=(zero,)).to_wire()]
        return [reply(query, rcode=dns.rcode.NXDOMAIN).to_wire()]  # no SOA

    async with ScriptedServer(handle) as server:
        resolver = DnsResolver(server.config())
        for name in ("soa-nx.example", "soa-nodata.example", "zero-soa.example", "bare.example"):
            assert await resolver.caa(name) == []
            assert await resolver.caa(name) == []
        with pytest.raises(AcmeError) as info:
            await resolver.txt("soa-nx.example")
        assert info.value.detail.startswith("NXDOMAIN looking up TXT for soa-nx.example")
    asked = [q.question[0].name.to_text() for q in server.queries]
    assert asked.count("soa-nx.example.") == 2  # CAA once (cached), TXT once
    assert asked.count("soa-nodata.example.") == 1
    assert asked.count("zero-soa.example.") == 2
    assert asked.count("bare.example.") == 2


def test_ttl_cache_expiry_and_eviction() -> None:
    now = 100.0
    cache: TtlCache[str, int] = TtlCache(max_ttl=60, max_entries=2, clock=lambda: now)
    cache.put("a", 1, ttl=10)
    cache.put("b", 2, ttl=300)  # capped at 60
    assert (cache.get("a"), cache.get("b")) == (1, 2)
    now = 110.0
    assert cache.get("a") is None  # expired, and dropped
    assert cache.get("b") == 2
    cache.put("c", 3, ttl=30)
    cache.put("d", 4, ttl=30)  # evicts the oldest: "b"
    assert (cache.get("b"), cache.get("c"), cache.get("d")) == (None, 3, 4)
    cache.put("e", 5, ttl=0)
    assert cache.get("e") is None
    assert len(cache) == 2
    disabled: TtlCache[str, int] = TtlCache(max_ttl=0)
    disabled.put("a", 1, ttl=300)
    assert not disabled.enabled
    assert disabled.get("a") is None


def test_wire_helpers_agree_with_dnspython() -> None:
    # The hand-built query is make_query's wire, ID aside.
    qname = dns.name.from_text("Mixed.Case.example")
    name_wire = qname.to_wire()
    assert name_wire is not None
    ours = resolver_module._QUERY_HEADER + name_wire + struct.pack("!HH", 257, 1)
    assert ours[2:] == dns.message.make_query(qname, "CAA").to_wire()[2:]

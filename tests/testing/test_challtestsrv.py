"""The challenge test server over real loopback sockets: DNS, management API, http-01, CLI."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import struct
import sys
from collections.abc import AsyncIterator

import dns.asyncquery
import dns.asyncresolver
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import httpx
import pytest

import acme_ca.testing
from acme_ca.testing import ChallengeTestServer, challtestsrv, dns_server
from acme_ca.testing.challtestsrv import main
from acme_ca.testing.dns_server import DnsRecords, DnsServer

LOOPBACK = "127.0.0.1"
TIMEOUT = 2.0


@pytest.fixture
async def srv() -> AsyncIterator[ChallengeTestServer]:
    """DNS only: each HTTP listener adds ~0.2 s of uvicorn shutdown to every test."""
    async with ChallengeTestServer(dns_listen=(LOOPBACK, 0), management_listen=None) as server:
        yield server


@pytest.fixture
async def full() -> AsyncIterator[ChallengeTestServer]:
    async with ChallengeTestServer(
        dns_listen=(LOOPBACK, 0),
        management_listen=(LOOPBACK, 0),
        http01_listen=(LOOPBACK, 0),
    ) as server:
        yield server


async def ask(
    srv: ChallengeTestServer, name: str, rdtype: str, *, tcp: bool = False
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return await dns.asyncquery.tcp(query, LOOPBACK, port=srv.dns_port, timeout=TIMEOUT)
    return await dns.asyncquery.udp(query, LOOPBACK, port=srv.dns_port, timeout=TIMEOUT)


def values(response: dns.message.Message) -> list[str]:
    assert response.rcode() == dns.rcode.NOERROR
    return sorted(rd.to_text() for rrset in response.answer for rd in rrset)


# -- DNS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_a_default_answers_every_name(srv: ChallengeTestServer, tcp: bool) -> None:
    response = await ask(srv, "anything.example.", "A", tcp=tcp)
    assert values(response) == ["127.0.0.1"]
    assert response.flags & dns.flags.AA


async def test_a_default_disabled_answers_empty_noerror(srv: ChallengeTestServer) -> None:
    srv.set_default_ipv4(None)
    assert values(await ask(srv, "example.com", "A")) == []


async def test_explicit_a_overrides_default_and_clear_restores_it(
    srv: ChallengeTestServer,
) -> None:
    srv.add_a("example.com", ["192.0.2.1"])
    srv.add_a("example.com", ["192.0.2.2"])
    assert values(await ask(srv, "example.com", "A")) == ["192.0.2.1", "192.0.2.2"]
    assert values(await ask(srv, "other.example.com", "A")) == ["127.0.0.1"]
    srv.clear_a("example.com")
    assert values(await ask(srv, "example.com", "A")) == ["127.0.0.1"]


async def test_aaaa_empty_without_default_or_records(srv: ChallengeTestServer) -> None:
    assert values(await ask(srv, "example.com", "AAAA")) == []


async def test_aaaa_default_and_explicit(srv: ChallengeTestServer) -> None:
    srv.set_default_ipv6("::1")
    assert values(await ask(srv, "example.com", "AAAA")) == ["::1"]
    srv.add_aaaa("example.com", ["2001:db8::1"])
    assert values(await ask(srv, "example.com", "AAAA", tcp=True)) == ["2001:db8::1"]
    srv.clear_aaaa("example.com")
    assert values(await ask(srv, "example.com", "AAAA")) == ["::1"]


async def test_txt_holds_two_values_and_clears(srv: ChallengeTestServer) -> None:
    name = "_acme-challenge.example.com"
    assert values(await ask(srv, name, "TXT")) == []
    srv.set_txt(name, "digest-for-wildcard")
    srv.set_txt(name, "digest-for-base")
    assert values(await ask(srv, name, "TXT")) == ['"digest-for-base"', '"digest-for-wildcard"']
    srv.clear_txt(name)
    assert values(await ask(srv, name, "TXT")) == []


async def test_long_txt_value_is_split_into_character_strings(srv: ChallengeTestServer) -> None:
    srv.set_txt("long.example", "x" * 300)
    response = await ask(srv, "long.example", "TXT", tcp=True)
    (rdata,) = response.answer[0]
    assert [len(s) for s in rdata.strings] == [255, 45]


async def test_caa_policies_and_clear(srv: ChallengeTestServer) -> None:
    assert values(await ask(srv, "example.com", "CAA")) == []
    srv.add_caa("example.com", [(0, "issue", "acme-ca.test"), (128, "iodef", "mailto:a@b.c")])
    assert values(await ask(srv, "example.com", "CAA")) == [
        '0 issue "acme-ca.test"',
        '128 iodef "mailto:a@b.c"',
    ]
    srv.clear_caa("example.com")
    assert values(await ask(srv, "example.com", "CAA")) == []


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_servfail_for_every_type_until_cleared(srv: ChallengeTestServer, tcp: bool) -> None:
    srv.set_servfail("broken.example")
    for rdtype in ("A", "TXT", "CAA"):
        response = await ask(srv, "broken.example", rdtype, tcp=tcp)
        assert response.rcode() == dns.rcode.SERVFAIL
    assert values(await ask(srv, "fine.example", "A", tcp=tcp)) == ["127.0.0.1"]
    srv.clear_servfail("broken.example.")
    assert values(await ask(srv, "broken.example", "A", tcp=tcp)) == ["127.0.0.1"]


async def test_names_match_case_insensitively_with_or_without_dot(
    srv: ChallengeTestServer,
) -> None:
    srv.add_a("MiXeD.Example.COM.", ["192.0.2.7"])
    srv.set_txt("_ACME-challenge.example.com", "v")
    assert values(await ask(srv, "mixed.example.com", "A")) == ["192.0.2.7"]
    assert values(await ask(srv, "MIXED.EXAMPLE.COM.", "A")) == ["192.0.2.7"]
    assert values(await ask(srv, "_acme-challenge.EXAMPLE.com", "TXT")) == ['"v"']
    srv.clear_a("mixed.example.com")
    assert values(await ask(srv, "mixed.example.com", "A")) == ["127.0.0.1"]


async def test_large_answer_truncated_over_udp_complete_over_tcp(
    srv: ChallengeTestServer,
) -> None:
    name = "big.example"
    for i in range(40):
        srv.set_txt(name, f"{i:02d}" + "v" * 41)
    query = dns.message.make_query(name, "TXT")
    udp = await dns.asyncquery.udp(query, LOOPBACK, port=srv.dns_port, timeout=TIMEOUT)
    assert udp.flags & dns.flags.TC
    assert len(udp.to_wire()) <= 512
    tcp = await dns.asyncquery.tcp(query, LOOPBACK, port=srv.dns_port, timeout=TIMEOUT)
    assert not tcp.flags & dns.flags.TC
    assert len(values(tcp)) == 40
    # Over TCP the EDNS payload size does not limit the answer (RFC 6891 §6.2.5).
    edns_query = dns.message.make_query(name, "TXT", use_edns=0, payload=1232)
    edns_tcp = await dns.asyncquery.tcp(edns_query, LOOPBACK, port=srv.dns_port, timeout=TIMEOUT)
    assert len(values(edns_tcp)) == 40
    edns_udp = await dns.asyncquery.udp(edns_query, LOOPBACK, port=srv.dns_port, timeout=TIMEOUT)
    assert edns_udp.flags & dns.flags.TC
    assert len(edns_udp.to_wire()) <= 1232


async def test_resolver_falls_back_to_tcp_on_truncation(srv: ChallengeTestServer) -> None:
    for i in range(40):
        srv.set_txt("big.example", f"{i:02d}" + "v" * 41)
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [LOOPBACK]
    resolver.port = srv.dns_port
    answer = await resolver.resolve("big.example", "TXT", lifetime=TIMEOUT)
    assert len(answer) == 40


async def test_non_in_class_is_refused(srv: ChallengeTestServer) -> None:
    query = dns.message.make_query("example.com", "A", rdclass=dns.rdataclass.CH)
    response = await dns.asyncquery.udp(query, LOOPBACK, port=srv.dns_port, timeout=TIMEOUT)
    assert response.rcode() == dns.rcode.REFUSED


async def _raw_udp(port: int, payload: bytes, wait: float) -> bytes | None:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, (LOOPBACK, port))
        await loop.sock_sendall(sock, payload)
        try:
            return await asyncio.wait_for(loop.sock_recv(sock, 4096), wait)
        except TimeoutError:
            return None


async def test_malformed_query_gets_formerr_and_server_keeps_answering(
    srv: ChallengeTestServer,
) -> None:
    garbage = struct.pack("!HHHHHH", 0x1234, 0, 1, 0, 0, 0) + b"\xff\xff\xff"
    reply = await _raw_udp(srv.dns_port, garbage, TIMEOUT)
    assert reply is not None
    parsed = dns.message.from_wire(reply)
    assert parsed.id == 0x1234
    assert parsed.rcode() == dns.rcode.FORMERR
    assert values(await ask(srv, "example.com", "A")) == ["127.0.0.1"]


async def test_responses_and_runts_get_no_reply(srv: ChallengeTestServer) -> None:
    response = dns.message.make_response(dns.message.make_query("example.com", "A"))
    assert await _raw_udp(srv.dns_port, response.to_wire(), 0.15) is None
    assert await _raw_udp(srv.dns_port, b"\x00\x01", 0.15) is None


async def test_idle_tcp_connection_is_closed() -> None:
    server = DnsServer(DnsRecords(), listen=(LOOPBACK, 0), tcp_idle_timeout=0.1)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
        writer.write(b"\x00")  # half a length prefix, then silence
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        writer.close()
    finally:
        await server.stop()


async def test_tcp_connection_serves_several_queries(srv: ChallengeTestServer) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, srv.dns_port)
    try:
        for name in ("a.example", "b.example"):
            wire = dns.message.make_query(name, "A").to_wire()
            writer.write(struct.pack("!H", len(wire)) + wire)
            (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), TIMEOUT))
            reply = dns.message.from_wire(await reader.readexactly(length))
            assert values(reply) == ["127.0.0.1"]
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("add_a", ("example.com", ["not-an-ip"])),
        ("add_a", ("example.com", ["::1"])),
        ("add_aaaa", ("example.com", ["127.0.0.1"])),
        ("add_a", ("", ["127.0.0.1"])),
        ("add_a", ("a..b", ["127.0.0.1"])),
        ("add_caa", ("example.com", [(0, "bad tag", "x")])),
        ("add_caa", ("example.com", [(256, "issue", "x")])),
        ("set_default_ipv4", ("::1",)),
        ("add_http01", ("a/b", "content")),
    ],
)
def test_setters_reject_malformed_input(method: str, args: tuple[object, ...]) -> None:
    server = ChallengeTestServer(dns_listen=(LOOPBACK, 0), management_listen=None)
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        getattr(server, method)(*args)


async def test_disabled_listeners_have_no_port() -> None:
    async with ChallengeTestServer(dns_listen=(LOOPBACK, 0), management_listen=None) as server:
        assert server.dns_port > 0
        with pytest.raises(RuntimeError):
            _ = server.management_port
        with pytest.raises(RuntimeError):
            _ = server.http01_port


# -- management API -------------------------------------------------------------------------


@pytest.fixture
async def api(full: ChallengeTestServer) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://{LOOPBACK}:{full.management_port}"
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client:
        yield client


async def post(api: httpx.AsyncClient, path: str, body: object) -> None:
    response = await api.post(path, json=body)
    assert response.status_code == 200, response.text


async def test_management_api_sets_and_clears_dns_records(
    full: ChallengeTestServer, api: httpx.AsyncClient
) -> None:
    await post(api, "/set-default-ipv4", {"ip": "192.0.2.9"})
    assert values(await ask(full, "x.example", "A")) == ["192.0.2.9"]
    await post(api, "/set-default-ipv4", {"ip": ""})
    assert values(await ask(full, "x.example", "A")) == []
    await post(api, "/add-a", {"host": "x.example.", "addresses": ["192.0.2.1"]})
    assert values(await ask(full, "x.example", "A")) == ["192.0.2.1"]
    await post(api, "/clear-a", {"host": "x.example"})
    assert values(await ask(full, "x.example", "A")) == []

    await post(api, "/set-default-ipv6", {"ip": "::1"})
    assert values(await ask(full, "x.example", "AAAA")) == ["::1"]
    await post(api, "/add-aaaa", {"host": "x.example", "addresses": ["2001:db8::2"]})
    assert values(await ask(full, "x.example", "AAAA")) == ["2001:db8::2"]
    await post(api, "/clear-aaaa", {"host": "x.example"})
    await post(api, "/set-default-ipv6", {"ip": ""})
    assert values(await ask(full, "x.example", "AAAA")) == []

    await post(api, "/set-txt", {"host": "_acme-challenge.x.example.", "value": "one"})
    await post(api, "/set-txt", {"host": "_acme-challenge.x.example", "value": "two"})
    assert values(await ask(full, "_acme-challenge.x.example", "TXT")) == ['"one"', '"two"']
    await post(api, "/clear-txt", {"host": "_acme-challenge.x.example"})
    assert values(await ask(full, "_acme-challenge.x.example", "TXT")) == []

    policies = [{"tag": "issue", "value": "ca.test"}, {"flags": 128, "tag": "x", "value": "y"}]
    await post(api, "/add-caa", {"host": "x.example", "policies": policies})
    assert values(await ask(full, "x.example", "CAA")) == ['0 issue "ca.test"', '128 x "y"']
    await post(api, "/clear-caa", {"host": "x.example"})
    assert values(await ask(full, "x.example", "CAA")) == []

    await post(api, "/set-servfail", {"host": "x.example"})
    assert (await ask(full, "x.example", "A")).rcode() == dns.rcode.SERVFAIL
    await post(api, "/clear-servfail", {"host": "x.example"})
    assert (await ask(full, "x.example", "A")).rcode() == dns.rcode.NOERROR


BAD_BODIES = [
    ("/add-a", b"not json"),
    ("/add-a", b"[]"),
    ("/add-a", b'{"addresses": ["192.0.2.1"]}'),
    ("/add-a", b'{"host": "x.example", "addresses": "192.0.2.1"}'),
    ("/add-a", b'{"host": "x.example", "addresses": ["nope"]}'),
    ("/add-a", b'{"host": "a..b", "addresses": ["192.0.2.1"]}'),
    ("/set-default-ipv4", b'{"ip": 4}'),
    ("/set-default-ipv6", b'{"ip": "127.0.0.1"}'),
    ("/set-txt", b'{"host": "x.example"}'),
    ("/add-caa", b'{"host": "x.example", "policies": [{"tag": "issue"}]}'),
    ("/add-caa", b'{"host": "x.example", "policies": [{"flags": true, "tag": "a", "value": ""}]}'),
    ("/add-caa", b'{"host": "x.example", "policies": [{"tag": "is sue", "value": ""}]}'),
    ("/add-http01", b'{"token": "t"}'),
    ("/clear-servfail", b"{}"),
]


async def test_management_api_rejects_bad_bodies(api: httpx.AsyncClient) -> None:
    # One server for all cases: a server per case would cost its uvicorn shutdown each time.
    for path, content in BAD_BODIES:
        response = await api.post(path, content=content)
        assert response.status_code == 400, (path, content)
        assert response.text.strip(), (path, content)


async def test_management_api_rejects_oversized_body(api: httpx.AsyncClient) -> None:
    response = await api.post("/set-txt", content=b" " * (65 * 1024))
    assert response.status_code == 400


async def test_management_api_is_post_only(api: httpx.AsyncClient) -> None:
    assert (await api.get("/add-a")).status_code == 405


# -- http-01 --------------------------------------------------------------------------------


async def test_http01_responder_serves_set_tokens_only(
    full: ChallengeTestServer, api: httpx.AsyncClient
) -> None:
    base = f"http://{LOOPBACK}:{full.http01_port}/.well-known/acme-challenge"
    full.add_http01("tok1", "tok1.thumbprint")
    await post(api, "/add-http01", {"token": "tok2", "content": "tok2.thumbprint"})
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        first = await client.get(f"{base}/tok1", headers={"Host": "example.com"})
        assert (first.status_code, first.text) == (200, "tok1.thumbprint")
        assert (await client.get(f"{base}/tok2")).text == "tok2.thumbprint"
        assert (await client.get(f"{base}/unknown")).status_code == 404
        assert (await client.get(f"http://{LOOPBACK}:{full.http01_port}/")).status_code == 404
        full.del_http01("tok1")
        await post(api, "/del-http01", {"token": "tok2"})
        assert (await client.get(f"{base}/tok1")).status_code == 404
        assert (await client.get(f"{base}/tok2")).status_code == 404


# -- command line ---------------------------------------------------------------------------


async def test_main_serves_until_sigterm_and_exits_zero() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from acme_ca.testing.challtestsrv import main; sys.exit(main(sys.argv[1:]))",
        "--dns=127.0.0.1:0",
        "--management=127.0.0.1:0",
        "--http01=127.0.0.1:0",
        "--default-ipv4=192.0.2.44",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        ports = dict(re.findall(r"(dns|management|http01)=127\.0\.0\.1:(\d+)", line))
        assert set(ports) == {"dns", "management", "http01"}, line
        query = dns.message.make_query("any.example", "A")
        reply = await dns.asyncquery.udp(query, LOOPBACK, port=int(ports["dns"]), timeout=TIMEOUT)
        assert values(reply) == ["192.0.2.44"]
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            url = f"http://{LOOPBACK}:{ports['management']}/set-txt"
            response = await client.post(url, json={"host": "a.example", "value": "v"})
            assert response.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_main_returns_one_when_the_dns_port_is_taken() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((LOOPBACK, 0))
        port = taken.getsockname()[1]
        assert main(["--dns", f"{LOOPBACK}:{port}", "--management", "off"]) == 1


@pytest.mark.parametrize(
    "argv",
    [["--dns", "nope"], ["--dns", "127.0.0.1:70000"], ["--management", "127.0.0.1"]],
)
def test_main_rejects_bad_addresses(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2


def test_main_rejects_bad_default_ip() -> None:
    assert main(["--dns", f"{LOOPBACK}:0", "--default-ipv4", "not-an-ip"]) == 2


def test_public_api_is_pinned() -> None:
    assert acme_ca.testing.__all__ == ["ChallengeTestServer"]
    assert challtestsrv.__all__ == ["ChallengeTestServer", "main"]
    assert dns_server.__all__ == ["DnsRecords", "DnsServer", "normalize_host"]

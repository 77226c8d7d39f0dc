"""Reading replies from the wire (`dns_wire`), checked against dnspython's own reading.

The oracle is what the resolver did before: `dns.message.from_wire`, then the RRset
for the name or the end of its CNAME chain (as `Message.resolve_chaining`), a
negative answer cached by its closest enclosing SOA (RFC 2308 §5).
"""

from __future__ import annotations

import random
import struct
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.ttl
import pytest

from acme_ca.va.dns_cache import NODATA, NXDOMAIN, Outcome
from acme_ca.va.dns_wire import Answer, read_answer, reply_to

QNAME = dns.name.from_text("host.example")
SOA_TEXT = "ns.example. host.example. 1 3600 600 86400 60"
RR = tuple[str, int, str, str]  # (owner, TTL, type, rdata text)


def oracle(wire: bytes, qname: dns.name.Name, rdtype: int) -> Answer:
    """The former reading: a full Message, then outcome_of (ValueError: contradictory)."""
    response = dns.message.from_wire(wire)
    rcode = response.rcode()
    nxdomain = rcode == dns.rcode.NXDOMAIN
    name, ttl = qname, float(dns.ttl.MAX_TTL)
    for _ in range(dns.message.MAX_CHAIN):
        cname = None
        for rrset in response.answer:
            if rrset.rdclass != dns.rdataclass.IN or rrset.name != name:
                continue
            if rrset.rdtype == rdtype:
                if nxdomain:
                    return Answer(rcode, None, None)
                return Answer(rcode, Outcome(False, tuple(rrset)), min(ttl, rrset.ttl))
            if rrset.rdtype == dns.rdatatype.CNAME and cname is None:
                cname = rrset
        if cname is None:
            break
        ttl = min(ttl, cname.ttl)
        name = cname[0].target
    else:
        return Answer(rcode, None, None)
    soa = None
    for rrset in response.authority:
        if (
            rrset.rdtype == dns.rdatatype.SOA
            and name.is_subdomain(rrset.name)
            and (soa is None or len(rrset.name) > len(soa.name))
        ):
            soa = rrset
    outcome = NXDOMAIN if nxdomain else NODATA
    if soa is None:
        return Answer(rcode, outcome, None)
    return Answer(rcode, outcome, min(ttl, soa.ttl, soa[0].minimum))


def response(
    answer: tuple[RR, ...] = (),
    authority: tuple[RR, ...] = (),
    *,
    rdtype: str = "A",
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
    rdclass: str = "IN",
    edns: bool = False,
) -> dns.message.Message:
    """A response to (QNAME, `rdtype`), each record its own RRset on the wire (in order)."""
    query = dns.message.make_query(QNAME, rdtype, use_edns=0 if edns else None)
    message = dns.message.make_response(query)
    message.set_rcode(rcode)
    for section, records in ((message.answer, answer), (message.authority, authority)):
        for owner, ttl, rrtype, text in records:
            section.append(dns.rrset.from_text(owner, ttl, rdclass, rrtype, text))
    return message


def question_of(rdtype: int, name: dns.name.Name = QNAME) -> bytes:
    wire = name.to_wire()
    assert wire is not None
    return wire.lower() + struct.pack("!HH", rdtype, dns.rdataclass.IN)


def read(message: dns.message.Message | bytes, rdtype: int = dns.rdatatype.A) -> Answer:
    """Ours, through `reply_to` as the resolver calls it, checked against the oracle."""
    wire = message if isinstance(message, bytes) else message.to_wire()
    expected = oracle(wire, QNAME, rdtype)
    assert read_answer(wire, QNAME, rdtype) == expected  # past the question, as for TCP
    reply = reply_to(question_of(rdtype), QNAME, rdtype, wire)
    assert reply is not None
    assert reply == (wire[2] << 8 | wire[3], expected)
    return expected


def cname_chain(length: int, end: RR | None) -> tuple[RR, ...]:
    names = ["host.example."] + [f"c{i}.example." for i in range(1, length + 1)]
    links = [(names[i], 300 - i, "CNAME", names[i + 1]) for i in range(length)]
    return (*links, end) if end else tuple(links)


def soa(owner: str, ttl: int = 300, minimum: int = 60) -> RR:
    return (owner, ttl, "SOA", f"ns.example. host.example. 1 3600 600 86400 {minimum}")


# ---- agreement with dnspython ----------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        response((("host.example.", 300, "A", "192.0.2.1"),)),
        # One RRset from RRs scattered over the answer, mixed case, duplicates, least TTL.
        response(
            (
                ("host.example.", 300, "A", "192.0.2.1"),
                ("other.example.", 5, "A", "192.0.2.66"),
                ("HOST.Example.", 100, "A", "192.0.2.2"),
                ("host.example.", 200, "A", "192.0.2.1"),
                ("host.example.", 50, "TXT", '"not asked"'),
            )
        ),
        response((("host.example.", 0x80000000, "A", "192.0.2.1"),)),  # a TTL over 2^31-1
        response(cname_chain(3, ("c3.example.", 400, "A", "192.0.2.3"))),
        response(cname_chain(15, ("c15.example.", 400, "A", "192.0.2.3"))),
        response(cname_chain(16, ("c16.example.", 400, "A", "192.0.2.3"))),  # too long
        response(cname_chain(2, None), (soa("example."),)),
        response(cname_chain(2, None), (soa("example."),), rcode=dns.rcode.NXDOMAIN),
        response(
            (("Host.Example.", 60, "CNAME", "C1.example."), ("c1.EXAMPLE.", 50, "A", "192.0.2.4"))
        ),
        # A CNAME RRset of two RRs: its last target, the least TTL.
        response(
            (
                ("host.example.", 300, "CNAME", "a.example."),
                ("host.example.", 30, "CNAME", "b.example."),
                ("a.example.", 300, "A", "192.0.2.10"),
                ("b.example.", 300, "A", "192.0.2.11"),
            )
        ),
        response((("a.example.", 60, "CNAME", "b.example."),)),  # no CNAME for the name
        response(  # a loop
            (
                ("host.example.", 60, "CNAME", "b.example."),
                ("b.example.", 60, "CNAME", "host.example."),
            )
        ),
        response((("host.example.", 300, "A", "192.0.2.1"),), rcode=dns.rcode.NXDOMAIN),
        response((), (soa("example.", 300, 60),)),
        response((), (soa("example.", 30, 60),), rcode=dns.rcode.NXDOMAIN),
        response((), (soa("example.", 0, 60),)),
        response((), (soa("elsewhere.invalid.", 300, 60),)),  # not enclosing: not cached
        response((), (soa("example.", 300, 60), soa("host.example.", 200, 20), soa(".", 9, 9))),
        response((), (soa("host.example.", 200, 20), soa("example.", 300, 60))),
        response((), (soa("example.", 300, 60), soa("EXAMPLE.", 100, 90))),  # one RRset
        response((), (("example.", 300, "NS", "ns.example."), soa("example."))),
        response((), (soa("example."),), rcode=dns.rcode.SERVFAIL),
        response((), (soa("example."),), rcode=dns.rcode.YXDOMAIN),
        response((("host.example.", 300, "A", "192.0.2.1"),), edns=True),
        response((), (soa("example."),), edns=True, rcode=dns.rcode.BADVERS),  # extended
    ],
)
def test_reading_agrees_with_dnspython(message: dns.message.Message) -> None:
    read(message)


def test_answers_of_other_types() -> None:
    txts = (("host.example.", 60, "TXT", '"a" "b"'), ("host.example.", 60, "TXT", '"c"'))
    assert read(response(txts, rdtype="TXT"), dns.rdatatype.TXT).outcome == Outcome(
        False, tuple(dns.rrset.from_text_list("host.example.", 60, "IN", "TXT", ['"a" "b"', '"c"']))
    )
    other_class = response(txts, rdtype="TXT", rdclass="CH")  # not IN: not the answer
    assert read(other_class, dns.rdatatype.TXT) == Answer(dns.rcode.NOERROR, NODATA, None)
    caa = response((("host.example.", 60, "CAA", '0 issue "ca.example"'),), rdtype="CAA")
    read(caa, dns.rdatatype.CAA)
    aaaa = response((("host.example.", 60, "AAAA", "2001:db8::1"),), rdtype="AAAA")
    read(aaaa, dns.rdatatype.AAAA)


def test_compressed_names_in_answers_and_cname_chains() -> None:
    # Owners and CNAME targets as pointers into the question and into earlier rdatas.
    message = response(
        (
            ("host.example.", 60, "CNAME", "web.host.example."),
            ("web.host.example.", 50, "CNAME", "host.example."),
        )
    )
    message.answer[1] = dns.rrset.from_text("web.host.example.", 50, "IN", "CNAME", "x.example.")
    message.answer.append(dns.rrset.from_text("x.example.", 40, "IN", "A", "192.0.2.5"))
    wire = message.to_wire()
    assert wire.count(b"\x04host") == 1  # compressed: named once
    answer = read(wire)
    assert answer.outcome is not None
    assert [r.address for r in answer.outcome.rdatas] == ["192.0.2.5"]
    assert answer.ttl == 40
    # By hand: an owner pointing at the question's name (offset 12) in another case.
    hand = bytearray(wire[:12] + question_of(dns.rdatatype.A))
    hand[6:12] = struct.pack("!3H", 1, 0, 0)
    hand[12:13] = b"\x04"
    hand[13:17] = b"HOST"
    hand += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 77, 4) + bytes([192, 0, 2, 9])
    answer = read(bytes(hand))
    assert answer.ttl == 77
    assert answer.outcome is not None
    assert [r.address for r in answer.outcome.rdatas] == ["192.0.2.9"]


def test_negative_ttl_is_the_closest_enclosing_soa() -> None:
    nodata = read(response((), (soa("example.", 300, 60),)))
    assert nodata == Answer(dns.rcode.NOERROR, NODATA, 60)  # min(TTL, MINIMUM)
    nxdomain = read(response((), (soa("example.", 30, 60),), rcode=dns.rcode.NXDOMAIN))
    assert nxdomain == Answer(dns.rcode.NXDOMAIN, NXDOMAIN, 30)
    closest = read(response((), (soa("example.", 300, 60), soa("host.example.", 200, 20))))
    assert closest.ttl == 20
    chained = read(response(cname_chain(2, None), (soa("example.", 300, 600),)))
    assert chained.ttl == 299  # the CNAMEs' TTLs (300, 299) bound it too
    assert read(response((), (soa("challtestsrv.invalid.", 0, 1),))).ttl is None


def test_soa_only_nodata_is_read_without_building_a_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pebble's challtestsrv: every NODATA carries an SOA of its own zone, TTL 0, MINIMUM 1.
    wire = response((), (soa("challtestsrv.invalid.", 0, 1),), rdtype="AAAA").to_wire()
    mine = response((), (soa("example.", 0, 1),), rdtype="CAA").to_wire()

    def refuse(*args: Any, **kwargs: Any) -> dns.message.Message:
        raise AssertionError("from_wire called")

    monkeypatch.setattr(dns.message, "from_wire", refuse)
    monkeypatch.setattr(dns.message.Message, "__init__", refuse)
    reply = reply_to(question_of(dns.rdatatype.AAAA), QNAME, dns.rdatatype.AAAA, wire)
    assert reply == (dns.flags.QR | dns.flags.RD, Answer(dns.rcode.NOERROR, NODATA, None))
    reply = reply_to(question_of(dns.rdatatype.CAA), QNAME, dns.rdatatype.CAA, mine)
    assert reply is not None
    assert reply[1] == Answer(dns.rcode.NOERROR, NODATA, 0)


# ---- malformed replies -------------------------------------------------------------------


GOOD = response(
    (
        ("host.example.", 60, "CNAME", "web.example."),
        ("web.example.", 60, "A", "192.0.2.1"),
    ),
    (soa("example."),),
    edns=True,
).to_wire()


def ours(wire: bytes, rdtype: int = dns.rdatatype.A) -> Any:
    return reply_to(question_of(rdtype), QNAME, rdtype, wire)


def test_every_truncation_is_not_an_answer() -> None:
    assert ours(GOOD) is not None
    for end in range(12, len(GOOD)):
        assert ours(GOOD[:end]) is None, end


def test_garbage_rdlength_is_not_an_answer() -> None:
    # The A record's RDLENGTH (4): its offset is where the address begins, minus 2.
    at = GOOD.index(bytes([192, 0, 2, 1])) - 2
    assert struct.unpack_from("!H", GOOD, at) == (4,)
    for rdlength in (0, 3, 5, 200, 0xFFFF):
        bad = GOOD[:at] + struct.pack("!H", rdlength) + GOOD[at + 2 :]
        with pytest.raises(Exception):  # noqa: B017, PT011 - dnspython's refusal, whatever it is
            dns.message.from_wire(bad)
        assert ours(bad) is None, rdlength
    # A skipped RR (the SOA) overrunning the message, or leaving trailing bytes.
    soa_at = GOOD.index(b"\x00\x06\x00\x01") + 8
    for rdlength in (0xFFFF, 1):
        assert ours(GOOD[:soa_at] + struct.pack("!H", rdlength) + GOOD[soa_at + 2 :]) is None
    assert ours(GOOD + b"\x00") is None  # trailing junk


def test_bad_pointers_opt_and_tsig_are_not_answers() -> None:
    base = bytearray(GOOD[:12] + question_of(dns.rdatatype.A))
    base[6:12] = struct.pack("!3H", 1, 0, 0)
    rr = struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 1])
    assert ours(bytes(base) + b"\xc0\x0c" + rr) is not None
    assert ours(bytes(base) + b"\xc0\xff" + rr) is None  # pointing forwards
    assert ours(bytes(base) + b"\x50abc" + rr) is None  # a bad label type
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    assert ours(bytes(base) + opt) is None  # OPT in the answer section
    twice = bytearray(GOOD)
    twice[10:12] = struct.pack("!H", 2)
    assert ours(bytes(twice) + opt) is None  # a second OPT
    tsig = bytearray(GOOD)
    tsig[10:12] = struct.pack("!H", 2)
    tsig_rr = b"\x00" + struct.pack("!HHIH", 250, 255, 0, 0)
    assert ours(bytes(tsig) + tsig_rr) is None  # a TSIG, and no key to check it with


def test_mutated_replies_never_raise_and_agree_when_dnspython_accepts() -> None:
    rng = random.Random(2308)
    accepted = 0
    for _ in range(3000):
        wire = bytearray(GOOD)
        for _ in range(rng.randint(1, 3)):
            wire[rng.randrange(12 + len(question_of(1)), len(wire))] = rng.randrange(256)
        data = bytes(wire)
        result = ours(data)  # never raises
        try:
            expected = oracle(data, QNAME, dns.rdatatype.A)
        except Exception:  # dnspython refuses it; ours may skip what it breaks (rdatas unread)
            continue
        accepted += 1
        assert result == (data[2] << 8 | data[3], expected)
    assert accepted > 100

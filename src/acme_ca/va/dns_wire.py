"""Reading the VA resolver's DNS replies straight from their wire format.

A reply is walked once with dnspython's low-level wire API (`dns.wire.Parser`,
`dns.name.from_wire_parser`, `dns.rdata.from_wire_parser`) instead of being built
into a `dns.message.Message`, which costs far more CPU. Every owner name is read
(compression pointers checked as dnspython does), but only the rdatas that can
matter are decoded: the answer's class-IN RRs of the queried type or CNAME, and,
for a negative answer, the authority SOAs enclosing the name it is about (and an
OPT, for the extended rcode). Other rdatas are skipped by their RDLENGTH, which
must fit; unread, they are not checked (where `dns.message.from_wire` refuses a
reply for one, it is read here). A reply malformed where read (a name, an RR
overrunning the message, trailing bytes, an OPT out of place, any TSIG) raises,
as `from_wire` does.

It is read as dnspython's `Message.resolve_chaining` reads one, RRs merged into
RRsets as `from_wire` merges them (by owner name, case-insensitively, class and
type; an RRset's TTL the least of its RRs', one over 2^31-1 being 0; a CNAME's
target its last RR's): the RRset for the name, or for the end of its CNAME chain,
cached by its TTL (RFC 1035 §3.2.1) and that of the CNAMEs followed. A negative
answer is cached by the closest SOA enclosing that name (RFC 2308 §5): min(its
TTL, its MINIMUM); without one it is not cached.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.ttl
import dns.wire
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.SOA import SOA

from acme_ca.va.dns_cache import NODATA, NXDOMAIN, Outcome

__all__ = ["HEADER_SIZE", "Answer", "Reply", "read_answer", "reply_to"]

HEADER_SIZE = 12
_EMPTY_QUESTION_RCODES = frozenset(
    {dns.rcode.FORMERR, dns.rcode.SERVFAIL, dns.rcode.NOTIMP, dns.rcode.REFUSED}
)
_IN = dns.rdataclass.IN
_CNAME = dns.rdatatype.CNAME
_SOA = dns.rdatatype.SOA
_OPT = dns.rdatatype.OPT
_SPECIAL = frozenset({dns.rdatatype.OPT, dns.rdatatype.TSIG})  # only in the additional section
_MAX_TTL = 0x7FFFFFFF  # a TTL above is read as 0 (RFC 2181 §8), as dnspython does
_RR_HEADER = "!HHIH"  # TYPE, CLASS, TTL, RDLENGTH


@dataclass(frozen=True, slots=True)
class Answer:
    """What a reply with records says: its rcode (EDNS-extended) and its outcome.

    `outcome` is None when the reply contradicts itself (a CNAME chain too long, an
    answer with NXDOMAIN); `ttl` is how long the outcome may be cached (None: not).
    """

    rcode: int
    outcome: Outcome | None
    ttl: float | None


Reply = tuple[int, Answer | None]
"""A reply's header flags, and what it says when it carries records."""


def reply_to(question: bytes, qname: dns.name.Name, rdtype: int, data: bytes) -> Reply | None:
    """`data`, if it answers the query with this `question` section (its ID matched); else None.

    `question` is the query's question section, its name lowercased; `qname` and
    `rdtype` are what it asks. As `Message.is_response`: a response to a QUERY echoing
    the question (or none, with FORMERR, SERVFAIL, NOTIMP or REFUSED). Undecodable
    data is not an answer (dnspython ignores it too). A truncated reply (to be asked
    again over TCP) or one without records is not read past its header.
    """
    flags = data[2] << 8 | data[3]
    if flags & 0xF800 != dns.flags.QR:  # QR, and opcode QUERY (0)
        return None
    qdcount, ancount, nscount, arcount = struct.unpack_from("!4H", data, 4)
    end = HEADER_SIZE
    if qdcount == 1:
        end += len(question)
        name, rrtype = data[HEADER_SIZE : end - 4], data[end - 4 : end]
        if name.lower() != question[:-4] or rrtype != question[-4:]:
            return None
    elif qdcount != 0 or flags & 0xF not in _EMPTY_QUESTION_RCODES:
        return None
    if flags & dns.flags.TC:
        return flags, None
    if not (ancount or nscount or arcount):
        return (flags, None) if len(data) == end else None  # dnspython refuses trailing junk
    try:
        return flags, read_answer(data, qname, rdtype, end)
    except Exception:
        return None


def read_answer(wire: bytes, qname: dns.name.Name, rdtype: int, start: int | None = None) -> Answer:
    """What the reply `wire` says about (`qname`, `rdtype`, IN); it raises if malformed.

    `start` is where its answer section begins; None reads past its question section.
    `rdtype` is not RRSIG (whose RRsets dnspython also tells apart by the type covered).
    """
    flags, qdcount, ancount, nscount, arcount = struct.unpack_from("!2x5H", wire)
    parser = dns.wire.Parser(wire, HEADER_SIZE)
    if start is None:
        for _ in range(qdcount):
            dns.name.from_wire_parser(parser)
            parser.get_struct("!HH")
    else:
        parser.seek(start)

    # The answer: RRsets of the queried type by owner (TTL, their RRs' rdatas), and CNAMEs.
    rrsets: dict[dns.name.Name, tuple[int, list[Any]]] = {}
    cnames: dict[dns.name.Name, tuple[int, dns.name.Name]] = {}
    for _ in range(ancount):
        owner = dns.name.from_wire_parser(parser)
        rrtype, rrclass, ttl, rdlen = parser.get_struct(_RR_HEADER)
        if rrtype in _SPECIAL:
            raise dns.exception.FormError
        if rrclass != _IN or rrtype not in (rdtype, _CNAME):
            parser.seek(parser.current + rdlen)
            continue
        with parser.restrict_to(rdlen):
            rdata = dns.rdata.from_wire_parser(rrclass, rrtype, parser)
        ttl = 0 if ttl > _MAX_TTL else ttl
        if rrtype == rdtype:
            rrset = rrsets.get(owner)
            if rrset is None:
                rrsets[owner] = (ttl, [rdata])
            else:
                rrset[1].append(rdata)
                rrsets[owner] = (min(rrset[0], ttl), rrset[1])
        else:
            cname = cnames.get(owner)
            cnames[owner] = (
                ttl if cname is None else min(cname[0], ttl),
                cast(CNAME, rdata).target,
            )

    # The RRset for the name, or for the end of its CNAME chain.
    name, chain_ttl = qname, float(dns.ttl.MAX_TTL)
    found = None
    too_long = False
    for _ in range(dns.message.MAX_CHAIN):
        found = rrsets.get(name)
        if found is not None:
            break
        cname = cnames.get(name)
        if cname is None:
            break
        chain_ttl = min(chain_ttl, cname[0])
        name = cname[1]
    else:
        too_long = True

    # The authority: for a negative answer, the SOAs enclosing `name` (TTL, MINIMUM).
    negative = found is None and not too_long
    soas: dict[tuple[dns.name.Name, int], tuple[int, int]] = {}
    for _ in range(nscount):
        owner = dns.name.from_wire_parser(parser)
        rrtype, rrclass, ttl, rdlen = parser.get_struct(_RR_HEADER)
        if rrtype in _SPECIAL:
            raise dns.exception.FormError
        if rrtype != _SOA or not negative or not name.is_subdomain(owner):
            parser.seek(parser.current + rdlen)
            continue
        with parser.restrict_to(rdlen):
            rdata = dns.rdata.from_wire_parser(rrclass, rrtype, parser)
        ttl = 0 if ttl > _MAX_TTL else ttl
        soa = soas.get((owner, rrclass))
        soas[owner, rrclass] = (ttl if soa is None else min(soa[0], ttl), cast(SOA, rdata).minimum)

    # The additional section: one OPT at most, owned by the root, for the extended rcode.
    ednsflags = 0
    opt = False
    for _ in range(arcount):
        owner = dns.name.from_wire_parser(parser)
        rrtype, rrclass, ttl, rdlen = parser.get_struct(_RR_HEADER)
        if rrtype == dns.rdatatype.TSIG:
            raise dns.exception.FormError  # dnspython: no key to check it with
        if rrtype != _OPT:
            parser.seek(parser.current + rdlen)
            continue
        if opt or owner != dns.name.root:
            raise dns.exception.FormError
        with parser.restrict_to(rdlen):
            dns.rdata.from_wire_parser(rrclass, rrtype, parser)
        opt, ednsflags = True, ttl
    if parser.remaining() != 0:
        raise dns.exception.FormError  # trailing junk

    rcode = flags & 0xF | (ednsflags >> 20) & 0xFF0  # dns.rcode.from_flags
    nxdomain = rcode == dns.rcode.NXDOMAIN
    if too_long or (found is not None and nxdomain):
        return Answer(rcode, None, None)
    if found is not None:
        # An RRset is a set: duplicates dropped, first ones kept; a singleton's, its last.
        rdatas = found[1]
        if len(rdatas) > 1:
            singleton = dns.rdatatype.is_singleton(dns.rdatatype.RdataType.make(rdtype))
            rdatas = rdatas[-1:] if singleton else list(dict.fromkeys(rdatas))
        return Answer(
            rcode, Outcome(nxdomain=False, rdatas=tuple(rdatas)), min(chain_ttl, found[0])
        )
    closest = None
    for (owner, _), soa in soas.items():
        if closest is None or len(owner) > len(closest[0]):
            closest = owner, soa
    outcome = NXDOMAIN if nxdomain else NODATA
    if closest is None:
        return Answer(rcode, outcome, None)
    soa_ttl, minimum = closest[1]
    return Answer(rcode, outcome, min(chain_ttl, soa_ttl, minimum))

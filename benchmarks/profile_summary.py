"""Summarize a py-spy "raw" (collapsed stacks) profile: inclusive cost per function, self
cost per library, and the share of a few named parts of the request path.

usage: .venv/bin/python benchmarks/profile_summary.py PROFILE.txt[.gz] [--top 30] [--thread]

A line of py-spy's raw format is `frame;frame;...;frame COUNT`, a frame being
`function (path:line)`; with `py-spy --threads` the first frame names the thread.
Inclusive cost counts a function once per sample however often it recurs in the stack.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import re
import sys
from collections.abc import Sequence

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^():]+)(?::\d+)?\)$")

# Named parts of the request path: a sample belongs to the first part whose marker
# appears in its stack, checked from the leaf upwards (so nesting resolves to the
# innermost part). Markers are substrings of "function (path)".
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sqlite3 driver (C: statements, commit, fsync)", ("sqlite3",)),
    ("psycopg driver", ("psycopg/",)),
    ("SQLAlchemy Core (Python)", ("sqlalchemy/",)),
    ("acme_ca.storage (store, executor, codec)", ("acme_ca/storage/",)),
    ("JWS signature verification", ("verify_signature",)),
    ("CSR check", ("check_csr",)),
    ("leaf signing", ("CertificateAuthority.issue",)),
    ("VA: DNS lookups (dnspython: A/AAAA, CAA)", ("dns/",)),
    ("VA: http-01 HTTP client (httpx, httpcore, h11)", ("httpx/", "httpcore/", "h11/")),
    ("VA: other", ("acme_ca/va/",)),
    ("TLS (ssl)", ("ssl.py", "sslproto")),
    ("acme_ca.protocol (JWS parsing, JSON, rendering)", ("acme_ca/protocol/",)),
    ("acme_ca.nonces", ("acme_ca/nonces",)),
    ("acme_ca.ra (business rules)", ("acme_ca/ra/",)),
    ("acme_ca.wfe (gate, handlers, headers)", ("acme_ca/wfe/",)),
    ("starlette routing/request", ("starlette/",)),
    ("uvicorn/httptools (HTTP server)", ("uvicorn/", "httptools")),
    ("asyncio/uvloop event loop", ("asyncio/", "uvloop")),
)


def parse(path: str) -> list[tuple[list[str], int]]:
    stacks: list[tuple[list[str], int]] = []
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as src:
        for raw in src:
            line = raw.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            stacks.append((stack.split(";"), int(count)))
    return stacks


def short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m["path"]
    for prefix in ("site-packages/", "lib/python3.11/"):
        if prefix in path:
            path = path.split(prefix, 1)[1]
    return f"{m['func']} ({path})"


def library(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m["path"]
    if "acme_ca/" in path:
        parts = path.split("acme_ca/", 1)[1].split("/")
        return "acme_ca." + (parts[0] if len(parts) > 1 else parts[0].removesuffix(".py"))
    return path.split("/", 1)[0].removesuffix(".py")


def part_of(stack: Sequence[str]) -> str:
    for frame in reversed(stack):
        for name, markers in PARTS:
            if any(marker in frame for marker in markers):
                return name
    return "other"


def summarize(stacks: list[tuple[list[str], int]], *, top: int, by_thread: bool) -> str:
    total = sum(c for _, c in stacks)
    out: list[str] = [f"samples: {total}"]
    if by_thread:
        threads: collections.Counter[str] = collections.Counter()
        for stack, count in stacks:
            threads[stack[0]] += count
        out.append("\nby thread:")
        out += [f"  {c / total:6.1%}  {name}" for name, c in threads.most_common()]
    inclusive: collections.Counter[str] = collections.Counter()
    self_lib: collections.Counter[str] = collections.Counter()
    parts: collections.Counter[str] = collections.Counter()
    for stack, count in stacks:
        frames = stack[1:] if by_thread else stack
        for name in {short(f) for f in frames}:
            inclusive[name] += count
        if frames:
            self_lib[library(frames[-1])] += count
        parts[part_of(frames)] += count
    out.append(f"\ntop {top} functions by inclusive share:")
    out += [f"  {c / total:6.1%}  {name}" for name, c in inclusive.most_common(top)]
    out.append("\nself time by library/module:")
    out += [f"  {c / total:6.1%}  {name}" for name, c in self_lib.most_common(15)]
    out.append("\nby part of the request path (innermost part of each sample):")
    out += [f"  {c / total:6.1%}  {name}" for name, c in parts.most_common()]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("profile")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--thread", action="store_true", help="the profile has thread frames")
    args = p.parse_args(argv)
    print(summarize(parse(args.profile), top=args.top, by_thread=args.thread))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`acme-ca admin certificates`: what was issued, newest first.

Certificates chosen by serial, account, name and status (filters combine), each
with its names, validity, account and status (valid, expired, or revoked with time
and reason). Every listing has a limit (100 unless `--limit`); the queries start
from an index (`storage.inventory`). The selectors here are also `admin revoke`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import json
import re
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from acme_ca.clock import SystemClock
from acme_ca.config import Settings
from acme_ca.errors import Identifier
from acme_ca.model import IdentifierType
from acme_ca.ra.renewal import normalize_serial
from acme_ca.ra.revocation import reason_name
from acme_ca.storage.engine import create_engines
from acme_ca.storage.inventory import CertificateFilter, CertificateRecord, Inventory, Only
from acme_ca.storage.migrate import upgrade
from acme_ca.storage.store import Storage

__all__ = [
    "account_arg",
    "account_exists",
    "certificate_json",
    "name_arg",
    "register_certificates",
    "serial_arg",
    "when",
]

SettingsLoader = Callable[[argparse.Namespace], Settings]

DEFAULT_LIMIT = 100
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


def serial_arg(text: str) -> str:
    """Hex as stored, from what operators paste: `0x`, colons, either case."""
    try:
        return normalize_serial(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a hexadecimal serial: {text!r}") from None


def account_arg(text: str) -> str:
    """An account's ID, or its URL (`.../acme/acct/ID`, as clients show it)."""
    value = text.strip()
    if "://" in value:
        segments = [s for s in urlsplit(value).path.split("/") if s]
        if len(segments) < 2 or segments[-2] != "acct":
            raise argparse.ArgumentTypeError(f"not an account URL (.../acct/ID): {text!r}")
        value = segments[-1]
    if not _ACCOUNT_ID.fullmatch(value):
        raise argparse.ArgumentTypeError(f"not an account ID or URL: {text!r}")
    return value


def name_arg(text: str) -> Identifier:
    """A DNS name (`*.` for a wildcard) or an IP address, as the certificate names it."""
    value = text.strip().lower().removesuffix(".")
    try:
        return Identifier(type=IdentifierType.IP, value=ipaddress.ip_address(value).compressed)
    except ValueError:
        pass
    if not value or not value.isascii() or " " in value:
        raise argparse.ArgumentTypeError(
            f"not a DNS name or IP address (give an IDN as its xn-- A-label): {text!r}"
        )
    return Identifier(type=IdentifierType.DNS, value=value)


def when(value: dt.datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


def certificate_json(record: CertificateRecord, now: dt.datetime) -> dict[str, Any]:
    reason = record.revocation_reason
    return {
        "serial": record.serial,
        "status": record.state(now),
        "names": [i.value for i in record.identifiers],
        "not_before": when(record.not_before),
        "not_after": when(record.not_after),
        "account": record.account_id,
        "revoked_at": when(record.revoked_at),
        "revocation_reason": reason_name(reason) if reason is not None else None,
    }


def _line(record: CertificateRecord, now: dt.datetime) -> str:
    names = ",".join(i.value for i in record.identifiers)
    line = (
        f"{record.serial}\t{record.state(now)}\t"
        f"{when(record.not_before)} .. {when(record.not_after)}\t"
        f"account {record.account_id}\t{names}"
    )
    if record.revoked_at is not None:
        reason = record.revocation_reason
        said = reason_name(reason) if reason is not None else ""
        line += f"\trevoked {when(record.revoked_at)} {said}"
    return line.rstrip()


async def account_exists(storage: Storage, account_id: str) -> bool:
    return await storage.get_account(account_id) is not None


async def _list(
    settings: Settings, wanted: CertificateFilter, limit: int
) -> tuple[list[CertificateRecord], bool] | None:
    """The page, or None if the account named does not exist."""
    clock = SystemClock()
    engines = create_engines(settings.database_url)
    try:
        await upgrade(engines)
        if wanted.account_id is not None and not await account_exists(
            Storage(engines, clock), wanted.account_id
        ):
            return None
        return await Inventory(engines).find(wanted, now=clock.now(), limit=limit)
    finally:
        await engines.dispose()


def _certificates(args: argparse.Namespace, settings: Settings) -> int:
    if args.limit < 1:
        print("acme-ca: --limit must be at least 1", file=sys.stderr)
        return 2
    wanted = CertificateFilter(
        serials=tuple(args.serial) if args.serial else None,
        account_id=args.account,
        name=args.name,
        only=args.only,
    )
    listed = asyncio.run(_list(settings, wanted, args.limit))
    if listed is None:
        print(f"acme-ca: no account {args.account!r}", file=sys.stderr)
        return 1
    records, more = listed
    now = SystemClock().now()
    if args.json:
        shown = [certificate_json(r, now) for r in records]
        print(json.dumps({"certificates": shown, "truncated": more}))
    else:
        for record in records:
            print(_line(record, now))
    if more:
        print(
            f"acme-ca: more certificates match; the {len(records)} newest are shown"
            " (--limit N for more, or narrow with --account, --name, --serial)",
            file=sys.stderr,
        )
    return 0


def register_certificates(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    add_common: Callable[[argparse.ArgumentParser], None],
    load: SettingsLoader,
) -> None:
    """Add `certificates` to the `admin` subcommands."""
    parser = commands.add_parser(
        "certificates", help="list issued certificates, newest first", description=__doc__
    )
    add_common(parser)
    parser.add_argument("--serial", action="append", type=serial_arg, help="hex (repeatable)")
    parser.add_argument("--account", type=account_arg, help="account ID or URL")
    parser.add_argument("--name", type=name_arg, help="DNS name (*.example for a wildcard) or IP")
    status = parser.add_mutually_exclusive_group()
    status.add_argument(
        "--revoked", dest="only", action="store_const", const=Only.REVOKED, help="revoked only"
    )
    status.add_argument(
        "--live",
        dest="only",
        action="store_const",
        const=Only.LIVE,
        help="neither revoked nor expired",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help=f"at most N certificates, the newest ({DEFAULT_LIMIT})",
    )
    parser.add_argument(
        "--json", action="store_true", help='print {"certificates": [...], "truncated": bool}'
    )
    parser.set_defaults(func=lambda args: _certificates(args, load(args)))

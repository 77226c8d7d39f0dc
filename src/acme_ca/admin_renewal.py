"""`acme-ca admin renew-early`: ask clients to renew certificates now (RFC 9773).

Marks live certificates, chosen by serial, by issuer, or by notBefore range
(filters combine), so that their renewalInfo window moves into the past; ARI
clients (certbot 4.1+, lego, ...) renew at their next check. For a planned mass
revocation: mark first, revoke after clients have renewed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from acme_ca.ca.bootstrap import INTERMEDIATE_CERT
from acme_ca.clock import SystemClock
from acme_ca.config import Settings
from acme_ca.ra.renewal import RenewalService, normalize_serial
from acme_ca.storage.engine import create_engines
from acme_ca.storage.migrate import upgrade
from acme_ca.storage.status import StatusStore
from acme_ca.storage.store import Storage

__all__ = ["parse_when", "register_renew_early"]

SettingsLoader = Callable[[argparse.Namespace], Settings]


def parse_when(text: str) -> dt.datetime:
    """ISO 8601 date or date-time; without a zone, UTC."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or date-time: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _serial(text: str) -> str:
    try:
        return normalize_serial(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a hexadecimal serial: {text!r}") from None


async def _mark(settings: Settings, args: argparse.Namespace) -> int:
    issuer: x509.Certificate | None = None
    if args.issuer is not None:
        path = Path(args.issuer) if args.issuer else settings.data_dir / INTERMEDIATE_CERT
        issuer = x509.load_pem_x509_certificates(path.read_bytes())[0]
    clock = SystemClock()
    engines = create_engines(settings.database_url)
    try:
        await upgrade(engines)
        service = RenewalService(
            storage=Storage(engines, clock),
            status=StatusStore(engines, clock),
            clock=clock,
            retry_after=dt.timedelta(seconds=settings.ari_retry_after),
        )
        return await service.mark_early(
            serials=args.serial,
            issuer=issuer,
            issued_before=args.before,
            issued_after=args.after,
        )
    finally:
        await engines.dispose()


def _renew_early(args: argparse.Namespace, settings: Settings) -> int:
    if args.serial is None and args.issuer is None and args.before is None and args.after is None:
        print("acme-ca: renew-early needs --serial, --issuer, --before or --after", file=sys.stderr)
        return 2
    count = asyncio.run(_mark(settings, args))
    if args.json:
        print(json.dumps({"marked": count}))
    else:
        print(f"marked {count} certificate(s) for early renewal")
    return 0


def register_renew_early(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    add_common: Callable[[argparse.ArgumentParser], None],
    load: SettingsLoader,
) -> None:
    """Add `renew-early` to the `admin` subcommands."""
    parser = commands.add_parser(
        "renew-early",
        help="move certificates' renewalInfo window into the past (RFC 9773)",
        description=__doc__,
    )
    add_common(parser)
    parser.add_argument("--serial", action="append", type=_serial, help="hex serial (repeatable)")
    parser.add_argument(
        "--issuer",
        nargs="?",
        const="",
        metavar="ISSUER_PEM",
        help="certificates signed by this issuer (default: the CA's intermediate)",
    )
    parser.add_argument("--before", type=parse_when, help="issued (notBefore) before DATE")
    parser.add_argument("--after", type=parse_when, help="issued (notBefore) at or after DATE")
    parser.add_argument("--json", action="store_true", help='print {"marked": N}')
    parser.set_defaults(func=lambda args: _renew_early(args, load(args)))

"""`acme-ca admin revoke`: revoke certificates as the operator, without the account
key or the certificate key.

By serial (repeatable), or every live certificate of an account and/or a name.
The revocation is the one ACME's revokeCert makes (`ra.revocation.record_revocation`):
the CRLs and OCSP answers list it with its reason, and keyCompromise blocks the key
for new CSRs and accounts. Already revoked certificates are reported and keep their
first revocation; unknown serials are reported and make the exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from acme_ca.admin_certificates import account_arg, account_exists, name_arg, serial_arg, when
from acme_ca.clock import SystemClock
from acme_ca.config import Settings
from acme_ca.model import RevocationReason
from acme_ca.ra.revocation import (
    OPERATOR_REASONS,
    OperatorRevocation,
    OperatorRevocationService,
    RevocationOutcome,
    operator_reason,
    reason_name,
)
from acme_ca.storage.engine import create_engines
from acme_ca.storage.inventory import Inventory
from acme_ca.storage.migrate import upgrade
from acme_ca.storage.store import Storage

__all__ = ["register_revoke"]

SettingsLoader = Callable[[argparse.Namespace], Settings]

_SAID = {
    RevocationOutcome.REVOKED: "revoked",
    RevocationOutcome.WOULD_REVOKE: "would revoke",
    RevocationOutcome.ALREADY_REVOKED: "already revoked",
    RevocationOutcome.NOT_FOUND: "not found",
}


def _reason(text: str) -> RevocationReason:
    try:
        return operator_reason(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def _revoke(settings: Settings, args: argparse.Namespace) -> list[OperatorRevocation] | None:
    """The outcomes, or None if the account named does not exist."""
    clock = SystemClock()
    engines = create_engines(settings.database_url)
    try:
        await upgrade(engines)
        storage = Storage(engines, clock)
        service = OperatorRevocationService(
            storage=storage, inventory=Inventory(engines), clock=clock
        )
        if args.serial:
            return await service.revoke_serials(args.serial, args.reason, dry_run=args.dry_run)
        if args.account is not None and not await account_exists(storage, args.account):
            return None
        return await service.revoke_live(
            account_id=args.account, name=args.name, reason=args.reason, dry_run=args.dry_run
        )
    finally:
        await engines.dispose()


def _result_json(result: OperatorRevocation) -> dict[str, Any]:
    cert = result.certificate
    shown: dict[str, Any] = {"serial": result.serial, "outcome": result.outcome}
    if cert is not None:
        shown["names"] = [i.value for i in cert.identifiers]
        shown["account"] = cert.account_id
    if result.outcome is RevocationOutcome.ALREADY_REVOKED and cert is not None:
        reason = cert.revocation_reason
        shown["revoked_at"] = when(cert.revoked_at)
        shown["revocation_reason"] = reason_name(reason) if reason is not None else None
    return shown


def _line(result: OperatorRevocation) -> str:
    line = f"{_SAID[result.outcome]} {result.serial}"
    cert = result.certificate
    if cert is None:
        return line
    if result.outcome is RevocationOutcome.ALREADY_REVOKED and cert.revoked_at is not None:
        reason = cert.revocation_reason
        said = reason_name(reason) if reason is not None else ""
        return f"{line}\tat {when(cert.revoked_at)} {said}".rstrip()
    names = ",".join(i.value for i in cert.identifiers)
    return f"{line}\t{names}\taccount {cert.account_id}"


def _summary(results: Sequence[OperatorRevocation], reason: RevocationReason) -> str:
    counts = dict.fromkeys(RevocationOutcome, 0)
    for result in results:
        counts[result.outcome] += 1
    parts = [f"{_SAID[kind]} {n}" for kind, n in counts.items() if n]
    text = ", ".join(parts) + f" (reason {reason_name(reason)})"
    if reason is RevocationReason.KEY_COMPROMISE and counts[RevocationOutcome.REVOKED]:
        text += "; their keys are blocked for new CSRs and accounts"
    return text


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.serial and (args.account is not None or args.name is not None):
        print("acme-ca: revoke takes --serial, or --account and/or --name", file=sys.stderr)
        return 2
    if not args.serial and args.account is None and args.name is None:
        print("acme-ca: revoke needs --serial, --account or --name", file=sys.stderr)
        return 2
    results = asyncio.run(_revoke(settings, args))
    if results is None:
        print(f"acme-ca: no account {args.account!r}", file=sys.stderr)
        return 1
    if args.json:
        shown = [_result_json(r) for r in results]
        print(
            json.dumps(
                {"reason": reason_name(args.reason), "dry_run": args.dry_run, "results": shown}
            )
        )
    else:
        for result in results:
            print(_line(result))
        if results:
            print(_summary(results, args.reason))
    if not results:
        print("acme-ca: no live certificate matches", file=sys.stderr)
        return 1
    if any(r.outcome is RevocationOutcome.NOT_FOUND for r in results):
        print("acme-ca: some serials name no certificate of this CA", file=sys.stderr)
        return 1
    return 0


def register_revoke(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    add_common: Callable[[argparse.ArgumentParser], None],
    load: SettingsLoader,
) -> None:
    """Add `revoke` to the `admin` subcommands."""
    parser = commands.add_parser(
        "revoke", help="revoke certificates as the operator (CRLs, OCSP)", description=__doc__
    )
    add_common(parser)
    parser.add_argument("--serial", action="append", type=serial_arg, help="hex (repeatable)")
    parser.add_argument(
        "--account", type=account_arg, help="every live certificate of this account (ID or URL)"
    )
    parser.add_argument(
        "--name", type=name_arg, help="every live certificate naming this DNS name or IP"
    )
    allowed = ", ".join(reason_name(r) for r in sorted(OPERATOR_REASONS))
    parser.add_argument(
        "--reason",
        type=_reason,
        default=RevocationReason.UNSPECIFIED,
        help=f"RFC 5280 reason: {allowed} (unspecified)",
    )
    parser.add_argument("--dry-run", action="store_true", help="report, revoke nothing")
    parser.add_argument("--json", action="store_true", help="print the outcome of each as JSON")
    parser.set_defaults(func=lambda args: _run(args, load(args)))

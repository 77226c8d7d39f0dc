"""`acme-ca admin ...`: operator commands that act on the database directly.

External Account Binding keys (RFC 8555 §7.3.4: create, list, revoke) here; early
renewal (`admin_renewal`), revocation (`admin_revocation`), the certificate listing
(`admin_certificates`) and seeding (`seed`) in modules of their own. The CLI
registers these subcommands and hands in its settings loader, so that this module
reads no configuration itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from acme_ca.clock import SystemClock
from acme_ca.config import Settings
from acme_ca.protocol.jws import b64url_encode
from acme_ca.ra.eab import create_eab_key, list_eab_keys, revoke_eab_key
from acme_ca.storage.engine import create_engines
from acme_ca.storage.migrate import upgrade
from acme_ca.storage.policy import EabKey, PolicyStore

__all__ = ["register_admin_commands"]

SettingsLoader = Callable[[argparse.Namespace], Settings]


def _key_json(key: EabKey) -> dict[str, Any]:
    return {
        "kid": key.kid,
        "label": key.label,
        "created": key.created_at.isoformat(),
        "revoked": key.revoked_at.isoformat() if key.revoked_at else None,
        "account": key.account_id,
        "accounts_bound": key.bind_count,
    }


async def _with_store(settings: Settings, action: Callable[[PolicyStore], Any]) -> Any:
    engines = create_engines(settings.database_url)
    try:
        await upgrade(engines)
        return await action(PolicyStore(engines, SystemClock()))
    finally:
        await engines.dispose()


def _eab_create(args: argparse.Namespace, settings: Settings) -> int:
    key: EabKey = asyncio.run(
        _with_store(settings, lambda store: create_eab_key(store, label=args.label))
    )
    hmac_key = b64url_encode(key.hmac_key)
    if args.json:
        print(json.dumps({"kid": key.kid, "hmac_key": hmac_key}))
    else:
        # The HMAC key is shown once; the account holder passes both to their client.
        print(f"kid: {key.kid}")
        print(f"hmac_key: {hmac_key}")
    return 0


def _eab_list(args: argparse.Namespace, settings: Settings) -> int:
    keys: list[EabKey] = asyncio.run(_with_store(settings, list_eab_keys))
    if args.json:
        print(json.dumps([_key_json(k) for k in keys]))
        return 0
    for key in keys:
        state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
        bound = f"{key.bind_count} account(s), first {key.account_id}" if key.bind_count else "-"
        print(
            f"{key.kid}\t{state}\tcreated {key.created_at:%Y-%m-%d}\t"
            f"bound: {bound}\tlabel: {key.label or '-'}"
        )
    return 0


def _eab_revoke(args: argparse.Namespace, settings: Settings) -> int:
    kid: str = args.kid
    revoked: bool = asyncio.run(_with_store(settings, lambda store: revoke_eab_key(store, kid)))
    if not revoked:
        print(f"acme-ca: no active EAB key {kid!r}", file=sys.stderr)
        return 1
    print(f"revoked {kid}")
    return 0


def register_admin_commands(
    admin: argparse.ArgumentParser,
    *,
    add_common: Callable[[argparse.ArgumentParser], None],
    load: SettingsLoader,
) -> None:
    """Add `admin eab create|list|revoke` under the `admin` parser."""
    groups = admin.add_subparsers(dest="admin_command", required=True)
    eab = groups.add_parser("eab", help="External Account Binding keys (RFC 8555 §7.3.4)")
    commands = eab.add_subparsers(dest="eab_command", required=True)

    def bind(parser: argparse.ArgumentParser, run: Callable[..., int]) -> None:
        add_common(parser)
        parser.set_defaults(func=lambda args: run(args, load(args)))

    create = commands.add_parser("create", help="create a key ID and HMAC key")
    create.add_argument("--label", help="a note for the operator (whose key this is)")
    create.add_argument("--json", action="store_true", help='print {"kid":..., "hmac_key":...}')
    bind(create, _eab_create)
    listing = commands.add_parser("list", help="list the keys and what they are bound to")
    listing.add_argument("--json", action="store_true")
    bind(listing, _eab_list)
    revoke = commands.add_parser("revoke", help="stop a key from binding new accounts")
    revoke.add_argument("kid")
    bind(revoke, _eab_revoke)
    from acme_ca.admin_renewal import register_renew_early

    register_renew_early(groups, add_common=add_common, load=load)
    from acme_ca.admin_revocation import register_revoke

    register_revoke(groups, add_common=add_common, load=load)
    from acme_ca.admin_certificates import register_certificates

    register_certificates(groups, add_common=add_common, load=load)
    from acme_ca.seed import register_seed

    register_seed(groups, add_common=add_common, load=load)

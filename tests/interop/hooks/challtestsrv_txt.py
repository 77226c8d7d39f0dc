"""dns-01 hook for real ACME clients: publish or remove a TXT record through challtestsrv.

Stdlib only, so that any python3 can run it. The management API address comes from the
environment variable CHALLTESTSRV_MANAGEMENT (e.g. ``http://127.0.0.1:8055``). Two calling
conventions, both mapped onto the Pebble challtestsrv API (POST /set-txt, /clear-txt):

* certbot ``--manual-auth-hook`` / ``--manual-cleanup-hook``: ``certbot-auth`` or
  ``certbot-cleanup`` with no further arguments; the name and value come from CERTBOT_DOMAIN
  and CERTBOT_VALIDATION.
* lego ``--dns exec`` (EXEC_PATH): ``present FQDN VALUE`` or ``cleanup FQDN VALUE``.
* dehydrated ``HOOK``: ``deploy_challenge DOMAIN TOKEN_FILENAME VALUE`` and
  ``clean_challenge DOMAIN TOKEN_FILENAME VALUE``; dehydrated calls its hook for many
  other events too (deploy_cert, startup_hook, ...), which are ignored with success.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request

_TIMEOUT = 5.0


def _post(path: str, body: dict[str, str]) -> None:
    base = os.environ["CHALLTESTSRV_MANAGEMENT"].rstrip("/")
    request = urllib.request.Request(
        f"{base}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
        if response.status != 200:
            raise SystemExit(f"challtestsrv {path} answered {response.status}")


def _challenge_host(domain: str) -> str:
    # RFC 8555 §8.4: the digest lives at _acme-challenge.<domain>; a wildcard's "*." is dropped
    # by the client before it gets here (RFC 8555 §7.1.3).
    return f"_acme-challenge.{domain.rstrip('.')}."


def main(argv: list[str]) -> int:
    match argv:
        case ["certbot-auth"]:
            host = _challenge_host(os.environ["CERTBOT_DOMAIN"])
            _post("/set-txt", {"host": host, "value": os.environ["CERTBOT_VALIDATION"]})
        case ["certbot-cleanup"]:
            _post("/clear-txt", {"host": _challenge_host(os.environ["CERTBOT_DOMAIN"])})
        case ["present", fqdn, value]:
            _post("/set-txt", {"host": fqdn, "value": value})
        case ["cleanup", fqdn, _value]:
            _post("/clear-txt", {"host": fqdn})
        case ["deploy_challenge", domain, _token, value]:
            _post("/set-txt", {"host": _challenge_host(domain), "value": value})
        case ["clean_challenge", domain, _token, _value]:
            _post("/clear-txt", {"host": _challenge_host(domain)})
        case [event, *_] if os.environ.get("DEHYDRATED_HOOK") == "1" and event.isidentifier():
            return 0  # another dehydrated hook event: nothing to do
        case _:
            print(f"usage: {sys.argv[0]} certbot-auth|certbot-cleanup", file=sys.stderr)
            print(f"       {sys.argv[0]} present|cleanup FQDN VALUE", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

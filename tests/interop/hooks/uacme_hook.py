"""Challenge hook for uacme (``uacme --hook PROGRAM``): http-01 files and dns-01 TXT records.

uacme runs the hook once per offered challenge of each authorization, as
``PROGRAM METHOD TYPE IDENT TOKEN AUTH``: METHOD ``begin`` (exit 0 accepts the challenge,
anything else declines it and uacme offers the next one), then ``done`` or ``failed`` for an
accepted one. AUTH is the key authorization, already the base64url SHA-256 digest for dns-01.

Stdlib only. The environment chooses what is accepted:

* UACME_HOOK_CHALLENGE: the one challenge type to accept (``http-01`` or ``dns-01``).
* UACME_HOOK_WELLKNOWN: for http-01, the directory served at /.well-known/acme-challenge/;
  the file TOKEN holding AUTH is written there on begin and removed afterwards.
* CHALLTESTSRV_MANAGEMENT: for dns-01, the challtestsrv management API; the TXT record is
  published and cleared by challtestsrv_txt.py (its lego calling convention).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_TXT_HOOK = Path(__file__).with_name("challtestsrv_txt.py")


def _txt(action: str, ident: str, value: str) -> int:
    # RFC 8555 §8.4: the record lives at _acme-challenge.<ident>; the ident of a wildcard's
    # authorization comes without "*." (RFC 8555 §7.1.3).
    host = f"_acme-challenge.{ident.rstrip('.')}."
    os.execv(sys.executable, [sys.executable, str(_TXT_HOOK), action, host, value])
    return 1  # not reached: execv replaces this process or raises


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print(f"usage: {sys.argv[0]} METHOD TYPE IDENT TOKEN AUTH", file=sys.stderr)
        return 85
    method, kind, ident, token, auth = argv
    if kind != os.environ.get("UACME_HOOK_CHALLENGE"):
        return 1  # declined: uacme tries the authorization's next challenge
    if method not in ("begin", "done", "failed"):
        print(f"{sys.argv[0]}: unknown method {method!r}", file=sys.stderr)
        return 2
    begin = method == "begin"
    if kind == "http-01":
        # RFC 8555 §8.3: the token is base64url, so it is a safe file name.
        path = Path(os.environ["UACME_HOOK_WELLKNOWN"]) / token
        if begin:
            path.write_text(auth)
        else:
            path.unlink(missing_ok=True)
        return 0
    if kind == "dns-01":
        return _txt("present" if begin else "cleanup", ident, auth)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

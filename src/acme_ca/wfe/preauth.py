"""Handler: pre-authorization, `newAuthz` (RFC 8555 §7.4.1), when configuration enables it."""

from __future__ import annotations

from acme_ca.errors import malformed, not_found
from acme_ca.protocol.messages import parse_identifier
from acme_ca.protocol.resources import render_authz
from acme_ca.wfe.context import FrontEnd
from acme_ca.wfe.http_types import Request, Response
from acme_ca.wfe.responses import json_response

__all__ = ["new_authz"]


async def new_authz(fe: FrontEnd, request: Request) -> Response:
    if not fe.meta.new_authz:
        # Not in the directory, so not a resource of this server.
        raise not_found("Pre-authorization (newAuthz) is not enabled on this CA")
    verified = await fe.gate.verify(request, allow_jwk=False, allow_kid=True)
    payload = verified.jws.payload_json()
    if "identifier" not in payload:
        raise malformed("newAuthz needs an 'identifier'")
    authz, created = await fe.ra.orders.new_authz(
        verified.require_account(), parse_identifier(payload["identifier"])
    )
    # RFC 8555 §7.4.1: 201 with the new authorization's URL in Location.
    return json_response(
        render_authz(authz, fe.urls),
        status=201 if created else 200,
        headers={"Location": fe.urls.authz(authz.id)},
    )

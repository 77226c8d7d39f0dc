"""Handler: ACME Renewal Information (RFC 9773 §4), a plain GET like the directory."""

from __future__ import annotations

from acme_ca.protocol.ari import parse_cert_id, render_renewal_info
from acme_ca.wfe.context import FrontEnd
from acme_ca.wfe.http_types import Request, Response
from acme_ca.wfe.responses import json_response

__all__ = ["renewal_info"]


async def renewal_info(fe: FrontEnd, request: Request) -> Response:
    cert_id = parse_cert_id(request.path_params["cert_id"])
    info = await fe.ra.renewal.renewal_info(cert_id)
    seconds = int(info.retry_after.total_seconds())
    # RFC 9773 §4.3: Retry-After tells the client when to ask again.
    return json_response(
        render_renewal_info(info.start, info.end), headers={"Retry-After": str(seconds)}
    )

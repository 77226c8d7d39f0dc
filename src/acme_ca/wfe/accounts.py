"""Handlers: directory, nonces, accounts, key change (RFC 8555 §7.1, §7.2, §7.3)."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from acme_ca.errors import AcmeError, ProblemType, malformed, unauthorized
from acme_ca.protocol.eab import ExternalAccountBinding, parse_eab
from acme_ca.protocol.jws import (
    import_public_jwk,
    loads_strict,
    parse_flattened,
    public_key_of,
    thumbprint,
    verify_signature,
)
from acme_ca.protocol.messages import parse_account_update, parse_new_account
from acme_ca.protocol.resources import render_account
from acme_ca.wfe.context import FrontEnd
from acme_ca.wfe.http_types import Request, Response
from acme_ca.wfe.responses import json_response

__all__ = [
    "account",
    "account_orders",
    "directory",
    "key_change",
    "new_account",
    "new_nonce",
    "terms",
]


async def _post_as_get_allowed(fe: FrontEnd, request: Request) -> None:
    """RFC 8555 §6.3: directory and newNonce take POST-as-GET as well as GET."""
    if request.method == "POST":
        # Where a client finds the terms: never refused for not having agreed to them.
        verified = await fe.gate.verify(request, allow_jwk=False, allow_kid=True, terms_exempt=True)
        if not verified.jws.is_post_as_get:
            raise malformed("POST-as-GET requests carry an empty payload")


async def directory(fe: FrontEnd, request: Request) -> Response:
    await _post_as_get_allowed(fe, request)
    urls = fe.urls
    meta: dict[str, Any] = {
        "externalAccountRequired": fe.meta.external_account_required,
    }
    if fe.meta.terms_of_service:
        meta["termsOfService"] = fe.meta.terms_of_service
    if fe.meta.website:
        meta["website"] = fe.meta.website
    if fe.meta.caa_identities:
        meta["caaIdentities"] = list(fe.meta.caa_identities)
    if fe.meta.profiles:
        meta["profiles"] = dict(fe.meta.profiles)
    doc: dict[str, Any] = {
        "newNonce": urls.new_nonce,
        "newAccount": urls.new_account,
        "newOrder": urls.new_order,
        "revokeCert": urls.revoke_cert,
        "keyChange": urls.key_change,
        "renewalInfo": urls.renewal_info,  # RFC 9773 §3
        "meta": meta,
    }
    if fe.meta.new_authz:
        doc["newAuthz"] = urls.new_authz
    return json_response(doc)


async def new_nonce(fe: FrontEnd, request: Request) -> Response:
    # RFC 8555 §7.2: HEAD answers 200, GET answers 204; the nonce is added by the wrapper.
    await _post_as_get_allowed(fe, request)
    status = 204 if request.method == "GET" else 200
    return Response(status_code=status, headers={"Cache-Control": "no-store"})


async def terms(fe: FrontEnd, request: Request) -> Response:
    return Response(
        "acme-ca terms of service: certificates are issued for the operator's private PKI.\n",
        media_type="text/plain",
    )


def _eab(
    binding: dict[str, Any] | None, *, url: str, key_thumbprint: str
) -> ExternalAccountBinding | None:
    """The binding's shape checked here (RFC 8555 §7.3.4); the RA checks key and MAC."""
    if binding is None:
        return None
    return parse_eab(binding, url=url, account_key_thumbprint=key_thumbprint)


async def new_account(fe: FrontEnd, request: Request) -> Response:
    verified = await fe.gate.verify(request, allow_jwk=True, allow_kid=False)
    jwk = verified.jws.header.jwk
    assert jwk is not None
    req = parse_new_account(verified.jws.payload_json())
    public_jwk = {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y", "n", "e")}
    key_thumbprint = thumbprint(verified.key)
    account, created = await fe.ra.accounts.new_account(
        jwk=public_jwk,
        thumbprint=key_thumbprint,
        public_key=public_key_of(verified.key),
        request=req,
        eab=_eab(
            req.external_account_binding,
            url=fe.gate.request_url(request),
            key_thumbprint=key_thumbprint,
        ),
        client_ip=request.client.host if request.client else None,
    )
    location = fe.urls.account(account.id)
    # RFC 8555 §7.3.1: 201 for a new account, 200 with its URL for an existing one.
    return json_response(
        render_account(account, fe.urls),
        status=201 if created else 200,
        headers={"Location": location},
    )


async def account(fe: FrontEnd, request: Request) -> Response:
    # RFC 8555 §7.3.3: where an account agrees to changed terms (or deactivates), so
    # open to one that has not agreed yet.
    verified = await fe.gate.verify(request, allow_jwk=False, allow_kid=True, terms_exempt=True)
    acct = verified.require_account()
    if fe.urls.account(acct.id) != fe.gate.request_url(request):
        raise unauthorized("The request URL is not the signing account's URL")
    if not verified.jws.is_post_as_get:
        acct = await fe.ra.accounts.update_account(
            acct, parse_account_update(verified.jws.payload_json())
        )
    return json_response(
        render_account(acct, fe.urls), headers={"Location": fe.urls.account(acct.id)}
    )


_CURSOR_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""An order ID as the cursor carries it (base64url); nothing else reaches the database."""


def _decode_cursor(raw: str | None) -> tuple[int, str] | None:
    if not raw:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, RecursionError):
        raise malformed("Invalid orders cursor") from None
    # The cursor comes back from the client: only the shape we issued, and an
    # integer the database column (BIGINT microseconds) can hold.
    if (
        not isinstance(value, list)
        or len(value) != 2
        or type(value[0]) is not int
        or not 0 <= value[0] < 2**63
        or not isinstance(value[1], str)
        or not _CURSOR_ID.fullmatch(value[1])
    ):
        raise malformed("Invalid orders cursor")
    return value[0], value[1]


def _encode_cursor(cursor: tuple[int, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(cursor)).encode()).rstrip(b"=").decode()


async def account_orders(fe: FrontEnd, request: Request) -> Response:
    """RFC 8555 §7.1.2.1: the account's orders, paginated with Link rel="next"."""
    verified = await fe.gate.verify(request, allow_jwk=False, allow_kid=True)
    acct = verified.require_account()
    if request.path_params["account_id"] != acct.id:
        raise unauthorized("The orders list belongs to another account")
    if not verified.jws.is_post_as_get:
        raise malformed("The orders list is fetched with POST-as-GET")
    ids, cursor = await fe.storage.list_order_ids(
        acct.id, after=_decode_cursor(request.query_params.get("cursor")), limit=fe.orders_page_size
    )
    # RFC 8555 §7.1.2.1: invalid orders (expired ones included) SHOULD NOT be listed;
    # the store leaves them out, so a page is full while more orders follow.
    headers = {}
    if cursor is not None:
        next_url = f"{fe.urls.account_orders(acct.id)}?cursor={_encode_cursor(cursor)}"
        headers["Link"] = f'<{next_url}>;rel="next"'
    return json_response({"orders": [fe.urls.order(i) for i in ids]}, headers=headers)


async def key_change(fe: FrontEnd, request: Request) -> Response:
    """RFC 8555 §7.3.5: an inner JWS signed by the new key inside one signed by the old."""
    # A compromised key can be rolled over before the terms are agreed to.
    verified = await fe.gate.verify(request, allow_jwk=False, allow_kid=True, terms_exempt=True)
    acct = verified.require_account()
    # The new key is an account key: the same algorithms as the outer JWS.
    inner = parse_flattened(verified.jws.payload, algorithms=fe.gate.algorithms)
    if inner.header.jwk is None:
        raise malformed("The inner JWS of a key change must carry a 'jwk'")
    if inner.header.url != verified.jws.header.url:
        raise malformed("The inner JWS 'url' must equal the outer JWS 'url'")
    if inner.header.nonce is not None:
        raise malformed("The inner JWS of a key change must not carry a 'nonce'")
    new_key = import_public_jwk(inner.header.jwk)
    verify_signature(inner, new_key, algorithms=fe.gate.algorithms)
    payload = loads_strict(inner.payload, what="keyChange payload")
    if not isinstance(payload, dict):
        raise malformed("The keyChange payload must be a JSON object")
    if payload.get("account") != fe.urls.account(acct.id):
        raise unauthorized("keyChange 'account' is not the signing account")
    old_key = payload.get("oldKey")
    if not isinstance(old_key, dict):
        raise malformed("keyChange 'oldKey' must be a JWK object")
    new_jwk = {k: v for k, v in inner.header.jwk.items() if k in ("kty", "crv", "x", "y", "n", "e")}
    try:
        updated = await fe.ra.accounts.change_key(
            acct,
            new_jwk=new_jwk,
            new_thumbprint=thumbprint(new_key),
            new_public_key=public_key_of(new_key),
            old_key_thumbprint=thumbprint(import_public_jwk(old_key)),
        )
    except AcmeError as exc:
        if exc.type == ProblemType.CONFLICT and "account" in exc.extra:
            # RFC 8555 §7.3.5: 409 with the other account's URL in Location.
            holder = exc.extra.pop("account")
            exc.headers["Location"] = fe.urls.account(holder)
        raise
    return json_response(
        render_account(updated, fe.urls), headers={"Location": fe.urls.account(updated.id)}
    )

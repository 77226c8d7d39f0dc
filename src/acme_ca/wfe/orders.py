"""Handlers: orders, authorizations, challenges, certificates, revocation (RFC 8555 §7.4-7.6)."""

from __future__ import annotations

import asyncio

from acme_ca.errors import malformed, not_found, unauthorized
from acme_ca.model import Account, Authorization, Challenge, ChallengeStatus, Order, OrderStatus
from acme_ca.policy.keys import spki_sha256
from acme_ca.protocol.jws import ParsedJws, public_key_of
from acme_ca.protocol.messages import (
    parse_authz_update,
    parse_finalize,
    parse_new_order,
    parse_revoke,
)
from acme_ca.protocol.resources import render_authz, render_challenge, render_order
from acme_ca.wfe.context import FrontEnd
from acme_ca.wfe.http_types import Request, Response
from acme_ca.wfe.responses import json_response

__all__ = [
    "authz",
    "certificate",
    "challenge",
    "finalize",
    "new_order",
    "order",
    "revoke_cert",
]

PEM_CHAIN = "application/pem-certificate-chain"


def _order_response(fe: FrontEnd, order_: Order, *, status: int = 200) -> Response:
    headers = {"Location": fe.urls.order(order_.id)}
    if order_.status == OrderStatus.PROCESSING:
        headers["Retry-After"] = "1"
    return json_response(render_order(order_, fe.urls), status=status, headers=headers)


def _require_post_as_get(jws: ParsedJws, what: str) -> None:
    if not jws.is_post_as_get:
        # RFC 8555 §6.3: a POST-as-GET carries the empty string as payload, not `{}`.
        raise malformed(f"{what} is fetched with POST-as-GET: the payload must be empty")


async def new_order(fe: FrontEnd, request: Request) -> Response:
    verified = await fe.gate.verify(request, allow_jwk=False, allow_kid=True, kept_account=True)
    req = parse_new_order(verified.jws.payload_json())
    created = await fe.ra.orders.new_order(verified.require_account(), req)
    return _order_response(fe, created, status=201)


async def _own_order(fe: FrontEnd, account: Account, order_id: str) -> Order:
    found = await fe.storage.get_order(order_id)
    if found is None:
        raise not_found("Order not found")
    if found.account_id != account.id:
        # As Pebble (and Boulder for authorizations): not the requester's resource.
        raise unauthorized("The order belongs to another account")
    return found


async def order(fe: FrontEnd, request: Request) -> Response:
    verified = await fe.gate.verify(request, allow_jwk=False, allow_kid=True, kept_account=True)
    # RFC 8555 §7.1.3: orders change only via finalize; this is POST-as-GET only.
    _require_post_as_get(verified.jws, "An order")
    found = await _own_order(fe, verified.require_account(), request.path_params["order_id"])
    return _order_response(fe, found)


async def finalize(fe: FrontEnd, request: Request) -> Response:
    verified = await fe.gate.verify(request, allow_jwk=False, allow_kid=True, kept_account=True)
    account = verified.require_account()
    found = await _own_order(fe, account, request.path_params["order_id"])
    req = parse_finalize(verified.jws.payload_json())
    finished = await fe.ra.issuance.finalize(
        account, found, req.csr_der, account_key=public_key_of(verified.key)
    )
    return _order_response(fe, finished)


async def _own_authz(fe: FrontEnd, account: Account, authz_id: str) -> Authorization:
    found = await fe.storage.get_authz(authz_id)
    if found is None:
        raise not_found("Authorization not found")
    if found.account_id != account.id:
        # RFC 8555 §7.5: the authorization (and its challenges) are the account's own.
        raise unauthorized("The authorization belongs to another account")
    return found


async def authz(fe: FrontEnd, request: Request) -> Response:
    verified = await fe.gate.verify(request, allow_jwk=False, allow_kid=True, kept_account=True)
    account = verified.require_account()
    found = await _own_authz(fe, account, request.path_params["authz_id"])
    if not verified.jws.is_post_as_get:
        parse_authz_update(verified.jws.payload_json())
        found = await fe.ra.orders.deactivate_authz(account, found)
    headers = {}
    if any(c.status == ChallengeStatus.PROCESSING for c in found.challenges):
        # RFC 8555 §7.5.1: the client polls the authorization while it is validated;
        # Retry-After says when to look again (as for a processing challenge or order).
        headers["Retry-After"] = "1"
    return json_response(render_authz(found, fe.urls), headers=headers)


def _challenge_response(fe: FrontEnd, authz_: Authorization, chall: Challenge) -> Response:
    headers = {"Link": f'<{fe.urls.authz(authz_.id)}>;rel="up"'}
    if chall.status == ChallengeStatus.PROCESSING:
        headers["Retry-After"] = "1"
    return json_response(render_challenge(chall, fe.urls), headers=headers)


async def challenge(fe: FrontEnd, request: Request) -> Response:
    verified = await fe.gate.verify(request, allow_jwk=False, allow_kid=True, kept_account=True)
    account = verified.require_account()
    found = await _own_authz(fe, account, request.path_params["authz_id"])
    chall = next((c for c in found.challenges if c.id == request.path_params["challenge_id"]), None)
    if chall is None:
        raise not_found("Challenge not found")
    if verified.jws.is_post_as_get:
        return _challenge_response(fe, found, chall)
    # RFC 8555 §7.5.1: the response payload is an empty object; extra members are ignored.
    verified.jws.payload_json()
    if await fe.ra.validations.respond(account, found, chall):
        # The authz and account just read and checked are the validation's subject.
        task = fe.ra.spawn_validation(chall.id, subject=(found, account))
        # Most validations finish in milliseconds: answering with the result saves
        # the client a poll. A slow one is still answered "processing" in time.
        await asyncio.wait({task}, timeout=fe.challenge_wait_seconds)
        if task.done() and not task.cancelled() and task.exception() is None:
            recorded = task.result()
            if recorded is not None:
                # What this validation committed: no need to read it back.
                return _challenge_response(fe, found, recorded)
    refreshed = await fe.storage.get_authz(found.id)
    assert refreshed is not None
    current = next(c for c in refreshed.challenges if c.id == chall.id)
    return _challenge_response(fe, refreshed, current)


async def certificate(fe: FrontEnd, request: Request) -> Response:
    verified = await fe.gate.verify(request, allow_jwk=False, allow_kid=True, kept_account=True)
    _require_post_as_get(verified.jws, "A certificate")
    account = verified.require_account()
    cert = await fe.storage.get_certificate(request.path_params["cert_id"])
    if cert is None:
        raise not_found("Certificate not found")
    if cert.account_id != account.id:
        raise unauthorized("The certificate belongs to another account")
    index = int(request.path_params.get("index", 0))
    if index >= len(cert.pem_chains):
        raise not_found("No such alternate chain")
    # RFC 8555 §7.4.2: "one or more link relation header fields" with relation
    # "alternate": a field line per alternate chain (golang.org/x/crypto/acme's
    # ListCertAlternates reads one link per line); with none, no Link here.
    links = [
        ("Link", f'<{fe.urls.alternate_certificate(cert.id, i)}>;rel="alternate"')
        for i in range(len(cert.pem_chains))
        if i != index
    ]
    return Response(cert.pem_chains[index], media_type=PEM_CHAIN, headers=links)


async def revoke_cert(fe: FrontEnd, request: Request) -> Response:
    # Revocation waits for no terms agreement (RFC 8555 §7.3.3 leaves the choice to
    # the server): the certificate's own key could revoke it anyway.
    verified = await fe.gate.verify(request, allow_jwk=True, allow_kid=True, terms_exempt=True)
    req = parse_revoke(verified.jws.payload_json())
    if verified.account is not None:
        await fe.ra.revocation.revoke_by_account(verified.account, req.certificate_der, req.reason)
    else:
        await fe.ra.revocation.revoke_by_certificate_key(
            spki_sha256(public_key_of(verified.key)), req.certificate_der, req.reason
        )
    return Response(status_code=200)

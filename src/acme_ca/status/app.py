"""The status listener's routes: CRL shards, OCSP (GET and POST), the issuer certificate.

Plain HTTP by design: CRLs and OCSP responses are signed objects, and relying
parties must fetch them without first validating a TLS chain (RFC 5280 §4.2.1.13,
RFC 6960 Appendix A).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from acme_ca.clock import Clock
from acme_ca.status.crls import CrlPublisher
from acme_ca.status.responder import OcspAnswer, OcspResponder

__all__ = ["create_status_app"]

CRL_TYPE = "application/pkix-crl"  # RFC 5280 §4.2.1.13 / RFC 2585 §4.2
CERT_TYPE = "application/pkix-cert"
OCSP_REQUEST_TYPE = "application/ocsp-request"
OCSP_RESPONSE_TYPE = "application/ocsp-response"
# An OCSPRequest for one certificate is about 100 bytes; a signed one well under 4 KB.
_MAX_OCSP_REQUEST = 8 * 1024
_MAX_SHARD_DIGITS = 6


def _http_date(value: dt.datetime) -> str:
    return email.utils.format_datetime(value.astimezone(dt.UTC), usegmt=True)


def _cache_headers(
    now: dt.datetime, *, this_update: dt.datetime, next_update: dt.datetime, max_age: dt.timedelta
) -> dict[str, str]:
    # RFC 5019 §6.2: caches may keep the object, but never past nextUpdate.
    seconds = max(0, int(min(max_age, next_update - now).total_seconds()))
    return {
        "Cache-Control": f"public, max-age={seconds}, no-transform",
        "Expires": _http_date(now + dt.timedelta(seconds=seconds)),
        "Last-Modified": _http_date(this_update),
    }


def create_status_app(
    *,
    crls: CrlPublisher,
    ocsp: OcspResponder | None,
    issuer: x509.Certificate,
    clock: Clock,
) -> Starlette:
    issuer_der = issuer.public_bytes(serialization.Encoding.DER)

    async def crl(request: Request) -> Response:
        if request.path_params["issuer_id"] != crls.issuer_id:
            return PlainTextResponse("no such issuer\n", status_code=404)
        shard = request.path_params["shard"]
        # ASCII digits, and few: starlette's int convertor let '²' and a 5000-digit
        # segment reach int(), which raised (a 500 instead of 404).
        if not (shard.isascii() and shard.isdigit() and len(shard) <= _MAX_SHARD_DIGITS):
            return PlainTextResponse("no such CRL shard\n", status_code=404)
        try:
            signed = await crls.get(int(shard))
        except KeyError:
            return PlainTextResponse("no such CRL shard\n", status_code=404)
        headers = _cache_headers(
            clock.now(),
            this_update=signed.this_update,
            next_update=signed.next_update,
            max_age=crls.settings.max_age,
        )
        headers["ETag"] = f'"{signed.etag}"'
        if request.headers.get("if-none-match") == headers["ETag"]:
            return Response(status_code=304, headers=headers)
        return Response(signed.der, media_type=CRL_TYPE, headers=headers)

    async def issuer_cert(request: Request) -> Response:
        if request.path_params["issuer_id"] != crls.issuer_id:
            return PlainTextResponse("no such issuer\n", status_code=404)
        return Response(
            issuer_der, media_type=CERT_TYPE, headers={"Cache-Control": "public, max-age=86400"}
        )

    def ocsp_response(answer: OcspAnswer, *, cacheable: bool) -> Response:
        headers = {"Cache-Control": "no-store"}
        if (
            cacheable
            and answer.cacheable
            and answer.this_update is not None
            and answer.next_update is not None
        ):
            headers = _cache_headers(
                clock.now(),
                this_update=answer.this_update,
                next_update=answer.next_update,
                max_age=max_age,
            )
            headers["ETag"] = f'"{hashlib.sha256(answer.der).hexdigest()[:32]}"'
        # RFC 6960 Appendix A.1: errors too are OCSPResponses with HTTP 200.
        return Response(answer.der, media_type=OCSP_RESPONSE_TYPE, headers=headers)

    max_age = ocsp.settings.max_age if ocsp is not None else dt.timedelta(0)

    async def ocsp_get(request: Request) -> Response:
        # RFC 6960 Appendix A.1: GET {url}/{url-encoding of base-64 of the DER request}.
        # The server already undid the URL encoding; some clients send base64url.
        text = request.path_params["encoded"].replace("-", "+").replace("_", "/")
        try:
            der = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            der = b""
        assert ocsp is not None
        return ocsp_response(await ocsp.respond(der), cacheable=True)

    async def ocsp_post(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_OCSP_REQUEST:
                return PlainTextResponse("request too large\n", status_code=413)
        assert ocsp is not None
        # RFC 5019 §5: POST responses may be cached too, but few caches key on bodies.
        return ocsp_response(await ocsp.respond(body), cacheable=False)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    routes = [
        Route("/crl/{issuer_id}/{shard}.crl", crl, methods=["GET"]),
        Route("/issuer/{issuer_id}.der", issuer_cert, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    if ocsp is not None:
        routes += [
            Route("/ocsp", ocsp_post, methods=["POST"]),
            Route("/ocsp/{encoded:path}", ocsp_get, methods=["GET"]),
        ]
    return Starlette(routes=routes)

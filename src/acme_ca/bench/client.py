"""A small asynchronous ACME (RFC 8555) client.

An external client: it speaks only the wire protocol and imports nothing from the
server side of acme_ca, so it drives any ACME server (acme-ca, Pebble, Boulder).
It keeps no business logic beyond the protocol's mechanics: signing, nonces,
problem documents and polling. Used by the benchmark and by integration tests.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import enum
import hashlib
import ipaddress
import json
import ssl
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from acme_ca.bench.http import Headers, HttpClient, HttpResponse, PooledHttpClient, TransportError
from acme_ca.bench.jws import PrivateKey, b64url, jwk_of, jwk_thumbprint, sign_jws

__all__ = [
    "AcmeClient",
    "AcmeProblem",
    "AcmeResponse",
    "Endpoint",
    "PollFailed",
    "RequestHook",
    "build_csr",
    "identifier_of",
]

_BAD_NONCE = "urn:ietf:params:acme:error:badNonce"
_JOSE = "application/jose+json"


class Endpoint(enum.StrEnum):
    """Labels for the latency hook: the ACME resource a request touched."""

    DIRECTORY = "directory"
    NEW_NONCE = "newNonce"
    NEW_ACCOUNT = "newAccount"
    NEW_ORDER = "newOrder"
    AUTHZ = "authz"
    CHALLENGE = "challenge"
    FINALIZE = "finalize"
    ORDER = "order"
    CERTIFICATE = "certificate"
    REVOKE = "revokeCert"
    ACCOUNT = "account"
    RESOURCE = "resource"


# (endpoint, seconds, HTTP status or 0 when no response arrived)
RequestHook = Callable[[str, float, int], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class AcmeResponse:
    """One successful HTTP exchange; `body` is the parsed JSON object, or {} if not JSON."""

    url: str
    status: int
    headers: Headers
    content: bytes
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def location(self) -> str | None:
        location: str | None = self.headers.get("location")
        return location

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("retry-after"))

    def links(self, rel: str) -> list[str]:
        """Targets of `Link` headers with relation `rel` (RFC 8288; RFC 8555 §7.4.2 "up")."""
        found: list[str] = []
        for value in self.headers.get_list("link", split_commas=True):
            target, _, params = value.partition(";")
            if f'rel="{rel}"' in params.replace(" ", "") or f"rel={rel}" in params:
                found.append(target.strip().strip("<>"))
        return found


class AcmeProblem(Exception):
    """An RFC 7807 problem document returned by the server (RFC 8555 §6.7)."""

    def __init__(
        self,
        *,
        status: int,
        type: str,
        detail: str,
        body: Mapping[str, Any],
        headers: Headers | None = None,
    ) -> None:
        super().__init__(f"{status} {type}: {detail}")
        self.status = status
        self.type = type
        self.detail = detail
        self.body = dict(body)
        self.headers = headers if headers is not None else Headers()

    @property
    def subproblems(self) -> list[dict[str, Any]]:
        subs = self.body.get("subproblems")
        return [s for s in subs if isinstance(s, dict)] if isinstance(subs, list) else []

    @classmethod
    def from_document(
        cls, status: int, doc: Mapping[str, Any], headers: Headers | None = None
    ) -> AcmeProblem:
        return cls(
            status=status,
            type=str(doc.get("type", "about:blank")),
            detail=str(doc.get("detail", "")),
            body=doc,
            headers=headers,
        )


class PollFailed(Exception):
    """A polled resource reached a final state other than the awaited one."""

    def __init__(self, url: str, resource: Mapping[str, Any]) -> None:
        self.url = url
        self.resource = dict(resource)
        self.status = str(resource.get("status"))
        self.problem = _embedded_problem(resource)
        why = f": {self.problem.type} {self.problem.detail}" if self.problem else ""
        super().__init__(f"{url} became {self.status}{why}")


def _embedded_problem(resource: Mapping[str, Any]) -> AcmeProblem | None:
    # An order carries "error" (RFC 8555 §7.1.3); an authorization carries it on the
    # challenge that failed (§7.1.5, §7.1.6).
    candidates: list[Any] = [resource.get("error")]
    challenges = resource.get("challenges")
    if isinstance(challenges, list):
        candidates += [c.get("error") for c in challenges if isinstance(c, dict)]
    for err in candidates:
        if isinstance(err, dict):
            return AcmeProblem.from_document(0, err)
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (RFC 9110 §10.2.3), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def identifier_of(name: str | Mapping[str, str]) -> dict[str, str]:
    """An ACME identifier object: IP literals become "ip" (RFC 8738), the rest "dns"."""
    if isinstance(name, Mapping):
        return {"type": name["type"], "value": name["value"]}
    try:
        return {"type": "ip", "value": str(ipaddress.ip_address(name))}
    except ValueError:
        return {"type": "dns", "value": name}


def build_csr(key: PrivateKey, names: Sequence[str]) -> bytes:
    """A DER PKCS#10 request for `names` (all in the SAN; the first also as CN if it fits)."""
    sans: list[x509.GeneralName] = []
    for name in names:
        ident = identifier_of(name)
        if ident["type"] == "ip":
            sans.append(x509.IPAddress(ipaddress.ip_address(ident["value"])))
        else:
            sans.append(x509.DNSName(ident["value"]))
    subject = (
        [x509.NameAttribute(NameOID.COMMON_NAME, names[0])] if names and len(names[0]) <= 64 else []
    )
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(subject))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
    )
    algorithm = None if _is_eddsa(key) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)


def _is_eddsa(key: PrivateKey) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return isinstance(key, ed25519.Ed25519PrivateKey)


class _HttpxClient:
    """An httpx client (e.g. over an in-process ASGI transport) as an `HttpClient`.

    Its errors pass through unchanged (httpx.TransportError and friends).
    """

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], content: bytes | None
    ) -> HttpResponse:
        resp = await self._http.request(method, url, content=content, headers=headers)
        return HttpResponse(
            status=resp.status_code,
            headers=Headers(resp.headers.multi_items()),
            content=resp.content,
        )

    async def aclose(self) -> None:
        await self._http.aclose()


class AcmeClient:
    """One ACME account on one server.

    Safe to share between tasks of one event loop: the nonce pool is a deque, and
    every response's Replay-Nonce goes back into it (RFC 8555 §7.2). A `badNonce`
    answer is retried once with the nonce it carried (§6.5). Problem documents raise
    `AcmeProblem`; transport failures raise `TransportError` (or, with an injected
    httpx client, httpx's errors).
    """

    def __init__(
        self,
        directory_url: str,
        *,
        account_key: PrivateKey,
        verify: str | bool | ssl.SSLContext = True,
        timeout: float = 30.0,
        on_request: RequestHook | None = None,
        kid: str | None = None,
        http: httpx.AsyncClient | HttpClient | None = None,
    ) -> None:
        self.directory_url = directory_url
        self.key = account_key
        self.kid = kid
        self.on_request = on_request
        self._owns_http = http is None
        self._http: HttpClient
        if http is None:
            self._http = PooledHttpClient(verify=verify, timeout=timeout, max_connections=8)
        elif isinstance(http, httpx.AsyncClient):
            self._http = _HttpxClient(http)
        else:
            self._http = http
        self._directory: dict[str, Any] | None = None
        self._nonces: collections.deque[str] = collections.deque(maxlen=32)
        self._thumbprint = jwk_thumbprint(account_key)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # -- transport -------------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: str,
        endpoint: str,
        *,
        content: bytes | None = None,
        accept: str | None = None,
        pool_nonce: bool = True,
    ) -> AcmeResponse:
        headers = {"Content-Type": _JOSE} if content is not None else {}
        if accept is not None:
            headers["Accept"] = accept
        start = time.perf_counter()
        try:
            resp = await self._http.request(method, url, content=content, headers=headers)
        except (httpx.HTTPError, TransportError):
            if self.on_request is not None:
                self.on_request(endpoint, time.perf_counter() - start, 0)
            raise
        if self.on_request is not None:
            self.on_request(endpoint, time.perf_counter() - start, resp.status)
        if pool_nonce and (nonce := resp.headers.get("replay-nonce")):
            self._nonces.append(nonce)
        ctype = resp.headers.get("content-type", "")
        body: dict[str, Any] = {}
        if "json" in ctype and resp.content:
            parsed = json.loads(resp.content)
            if isinstance(parsed, dict):
                body = parsed
        if resp.status >= 400:
            doc = body or {"type": "about:blank", "detail": resp.text[:200]}
            raise AcmeProblem.from_document(resp.status, doc, resp.headers)
        return AcmeResponse(
            url=url, status=resp.status, headers=resp.headers, content=resp.content, body=body
        )

    async def directory(self) -> dict[str, Any]:
        """The directory object (RFC 8555 §7.1.1), fetched once."""
        if self._directory is None:
            resp = await self._send("GET", self.directory_url, Endpoint.DIRECTORY)
            self._directory = resp.body
        return self._directory

    async def _url(self, resource: str) -> str:
        url = (await self.directory()).get(resource)
        if not isinstance(url, str):
            raise ValueError(f"the directory has no {resource!r}")
        return url

    async def new_nonce(self) -> str:
        """A fresh nonce from newNonce (RFC 8555 §7.2), bypassing the pool."""
        url = await self._url("newNonce")
        resp = await self._send("HEAD", url, Endpoint.NEW_NONCE, pool_nonce=False)
        nonce: str | None = resp.headers.get("replay-nonce")
        if not nonce:
            raise ValueError("newNonce answered without Replay-Nonce")
        return nonce

    async def _nonce(self) -> str:
        try:
            return self._nonces.pop()  # the freshest: least likely to have expired
        except IndexError:
            return await self.new_nonce()

    async def post(
        self,
        url: str,
        payload: Mapping[str, Any] | None,
        *,
        endpoint: str = Endpoint.RESOURCE,
        use_jwk: bool = False,
        key: PrivateKey | None = None,
        accept: str | None = None,
    ) -> AcmeResponse:
        """A signed POST; `payload=None` is POST-as-GET (RFC 8555 §6.3).

        Signs with the account key and `kid`, or with `jwk` if `use_jwk` or `key` is
        given (newAccount and revocation by certificate key, §6.2).
        """
        sign_key = key or self.key
        kid = None if use_jwk or key is not None else self.kid
        if kid is None and not use_jwk and key is None:
            raise ValueError("no account URL yet: call new_account() first")
        for attempt in range(2):
            jws = sign_jws(sign_key, payload, url=url, nonce=await self._nonce(), kid=kid)
            try:
                return await self._send(
                    "POST", url, endpoint, content=json.dumps(jws).encode(), accept=accept
                )
            except AcmeProblem as problem:
                # RFC 8555 §6.5: the badNonce response carries a fresh nonce; retry once.
                if problem.type != _BAD_NONCE or attempt == 1:
                    raise
        raise AssertionError("unreachable")

    async def post_as_get(self, url: str, *, endpoint: str = Endpoint.RESOURCE) -> AcmeResponse:
        return await self.post(url, None, endpoint=endpoint)

    # -- resources -------------------------------------------------------------

    async def new_account(
        self,
        *,
        contact: Sequence[str] = (),
        tos: bool = True,
        only_existing: bool = False,
    ) -> AcmeResponse:
        """Create or look up the account (RFC 8555 §7.3); remembers its URL as `kid`."""
        payload: dict[str, Any]
        if only_existing:
            payload = {"onlyReturnExisting": True}
        else:
            payload = {"termsOfServiceAgreed": tos}
            if contact:
                payload["contact"] = list(contact)
        resp = await self.post(
            await self._url("newAccount"), payload, endpoint=Endpoint.NEW_ACCOUNT, use_jwk=True
        )
        if resp.location is None:
            raise ValueError("newAccount answered without Location")
        self.kid = resp.location
        return resp

    async def new_order(
        self,
        identifiers: Sequence[str | Mapping[str, str]],
        *,
        profile: str | None = None,
    ) -> AcmeResponse:
        """Submit an order (RFC 8555 §7.4); the order URL is `response.location`."""
        payload: dict[str, Any] = {"identifiers": [identifier_of(i) for i in identifiers]}
        if profile is not None:
            payload["profile"] = profile
        return await self.post(await self._url("newOrder"), payload, endpoint=Endpoint.NEW_ORDER)

    async def respond_challenge(self, url: str) -> AcmeResponse:
        """Tell the server the challenge is ready (RFC 8555 §7.5.1): an empty object."""
        return await self.post(url, {}, endpoint=Endpoint.CHALLENGE)

    async def poll(
        self,
        url: str,
        *,
        until: Collection[str],
        # A budget checked before each sleep, so that no request is cut mid-flight.
        timeout: float = 30.0,  # noqa: ASYNC109
        endpoint: str = Endpoint.RESOURCE,
        min_delay: float = 0.05,
        max_delay: float = 1.0,
    ) -> AcmeResponse:
        """POST-as-GET `url` until its status is in `until` (RFC 8555 §7.5.1).

        The first fetch is immediate; then waits double from `min_delay` up to
        `max_delay`. A Retry-After header is honoured but capped at `max_delay`.
        Raises PollFailed on a final status not in `until`, TimeoutError after `timeout`.
        """
        final = {"valid", "invalid", "deactivated", "expired", "revoked"} - set(until)
        deadline = time.monotonic() + timeout
        delay = min_delay
        while True:
            resp = await self.post_as_get(url, endpoint=endpoint)
            status = resp.body.get("status")
            if status in until:
                return resp
            if status in final:
                raise PollFailed(url, resp.body)
            wait = resp.retry_after
            wait = min(max_delay, delay if wait is None else wait)
            if time.monotonic() + wait > deadline:
                raise TimeoutError(f"{url} still {status!r} after {timeout}s")
            await asyncio.sleep(wait)
            delay = min(max_delay, delay * 2)

    async def finalize(self, url: str, csr_der: bytes) -> AcmeResponse:
        """Submit the CSR (RFC 8555 §7.4); returns the order."""
        return await self.post(url, {"csr": b64url(csr_der)}, endpoint=Endpoint.FINALIZE)

    async def download_certificate(self, url: str) -> AcmeResponse:
        """The PEM chain in `response.content` (RFC 8555 §7.4.2); alternates in links()."""
        return await self.post(
            url, None, endpoint=Endpoint.CERTIFICATE, accept="application/pem-certificate-chain"
        )

    async def revoke(
        self, cert_der: bytes, reason: int | None = None, *, key: PrivateKey | None = None
    ) -> AcmeResponse:
        """Revoke (RFC 8555 §7.6), as the account, or with the certificate's `key`."""
        payload: dict[str, Any] = {"certificate": b64url(cert_der)}
        if reason is not None:
            payload["reason"] = reason
        return await self.post(
            await self._url("revokeCert"), payload, endpoint=Endpoint.REVOKE, key=key
        )

    async def change_key(self, new_key: PrivateKey) -> AcmeResponse:
        """Roll the account over to `new_key` (RFC 8555 §7.3.5); later requests, and key
        authorizations, use it."""
        if self.kid is None:
            raise ValueError("no account URL yet: call new_account() first")
        url = await self._url("keyChange")
        # The inner JWS: signed by the new key, no nonce, the same url as the outer one.
        inner = sign_jws(
            new_key, {"account": self.kid, "oldKey": jwk_of(self.key)}, url=url, nonce=None
        )
        resp = await self.post(url, inner, endpoint=Endpoint.ACCOUNT)
        self.key = new_key
        self._thumbprint = jwk_thumbprint(new_key)
        return resp

    async def deactivate_account(self) -> AcmeResponse:
        """RFC 8555 §7.3.6."""
        if self.kid is None:
            raise ValueError("no account URL yet: call new_account() first")
        return await self.post(self.kid, {"status": "deactivated"}, endpoint=Endpoint.ACCOUNT)

    async def deactivate_authorization(self, url: str) -> AcmeResponse:
        """RFC 8555 §7.5.2."""
        return await self.post(url, {"status": "deactivated"}, endpoint=Endpoint.AUTHZ)

    # -- challenge material ----------------------------------------------------

    @property
    def thumbprint(self) -> str:
        return self._thumbprint

    def key_authorization(self, token: str) -> str:
        """token || '.' || base64url(JWK thumbprint) (RFC 8555 §8.1)."""
        return f"{token}.{self._thumbprint}"

    def dns01_txt_value(self, token: str) -> str:
        """The TXT record value for dns-01 (RFC 8555 §8.4)."""
        return b64url(hashlib.sha256(self.key_authorization(token).encode("ascii")).digest())

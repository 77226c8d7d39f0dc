"""The request gate: every POST passes here before a handler sees it (RFC 8555 §6).

Order of checks: transport (Content-Type, size), JWS shape, `url`, key lookup,
signature, then the nonce, so that a forged request cannot spend a nonce and a
replayed one costs one signature check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from acme_ca.errors import AcmeError, ProblemType, account_not_valid, malformed
from acme_ca.model import Account, AccountStatus
from acme_ca.nonces import NonceService
from acme_ca.protocol.jws import (
    ALLOWED_ALGORITHMS,
    JoseKey,
    ParsedJws,
    import_public_jwk,
    parse_flattened,
    require_url,
    verify_signature,
)
from acme_ca.protocol.urls import Urls
from acme_ca.storage.store import StorageReader
from acme_ca.wfe.http_types import Request
from acme_ca.wfe.responses import body_too_large

__all__ = ["Gate", "RequiredTerms", "VerifiedRequest"]

JOSE_CONTENT_TYPE = "application/jose+json"


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedRequest:
    """A POST whose signature, nonce and URL were checked."""

    jws: ParsedJws
    key: JoseKey
    account: Account | None
    """Set when signed with `kid`; None when signed with an embedded `jwk`."""

    def require_account(self) -> Account:
        assert self.account is not None
        return self.account


@dataclass(frozen=True, slots=True, kw_only=True)
class RequiredTerms:
    """RFC 8555 §7.3.3, when the operator requires agreement to changed terms."""

    url: str
    """The current terms of service."""
    legacy: str
    """What accounts with no recorded agreement (older than migration 0004) agreed to."""

    def agreed(self, account: Account) -> bool:
        return (account.tos_agreed_url or self.legacy) == self.url

    def refusal(self, account_url: str) -> AcmeError:
        # The terms page is also where a person learns how to agree (`instance`).
        return AcmeError(
            type=ProblemType.USER_ACTION_REQUIRED,
            detail=(
                f"The terms of service changed: read {self.url} and agree by posting"
                f' {{"termsOfServiceAgreed": true}} to {account_url}'
            ),
            headers={"Link": f'<{self.url}>;rel="terms-of-service"'},
            extra={"instance": self.url},
        )


class Gate:
    def __init__(
        self,
        *,
        storage: StorageReader,
        nonces: NonceService,
        urls: Urls,
        max_body_bytes: int = 64 * 1024,
        key_cache_size: int = 4096,
        terms: RequiredTerms | None = None,
        algorithms: Sequence[str] = ALLOWED_ALGORITHMS,
    ) -> None:
        """`algorithms`: the JWS `alg` values accepted, those of the account keys the key
        policy accepts (`KeyPolicy.jws_algorithms`), so that a client following the
        `badSignatureAlgorithm` list (RFC 8555 §6.2) is not then refused `badPublicKey`."""
        unknown = set(algorithms) - set(ALLOWED_ALGORITHMS)
        if unknown or not algorithms:
            raise ValueError(f"JWS algorithms must be some of {ALLOWED_ALGORITHMS}: {algorithms}")
        self._algorithms = tuple(algorithms)
        self._storage = storage
        self._terms = terms
        self._nonces = nonces
        self._urls = urls
        self._max_body = max_body_bytes
        # Parsed account keys by thumbprint: JWK import is the costliest step after
        # signature verification. Keyed by thumbprint, so a key change cannot be
        # served a stale key.
        self._key_cache: dict[str, JoseKey] = {}
        self._key_cache_size = key_cache_size
        # Accounts by ID, where the store re-checks them at nonce redemption; this
        # saves a read (a PostgreSQL round trip) per request.
        self._keep_accounts = storage.checks_accounts_at_redemption
        self._accounts: dict[str, Account] = {}

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The JWS `alg` values accepted, as `badSignatureAlgorithm` lists them."""
        return self._algorithms

    @property
    def max_body_bytes(self) -> int:
        """The largest request body; the server refuses a longer one before it is read."""
        return self._max_body

    def request_url(self, request: Request) -> str:
        path = request.path
        if "?" in path or "#" in path or "\\" in path:
            path = path.replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
        url = self._urls.base + path
        if request.query_string:
            url += "?" + request.query_string.decode("latin-1")
        return url

    def read_body(self, request: Request) -> bytes:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != JOSE_CONTENT_TYPE:
            # RFC 8555 §6.2: requests MUST use application/jose+json.
            raise AcmeError(
                type=ProblemType.MALFORMED,
                detail=f"Content-Type must be {JOSE_CONTENT_TYPE}",
                status=415,
            )
        # The servers read at most max_body_bytes; a body handed in directly is checked too.
        if len(request.body) > self._max_body:
            raise body_too_large(self._max_body)
        if not request.body:
            raise malformed("Request body is empty")
        return request.body

    def _account_key(self, account: Account) -> JoseKey:
        key = self._key_cache.get(account.thumbprint)
        if key is None:
            key = import_public_jwk(account.jwk)
            if len(self._key_cache) >= self._key_cache_size:
                self._key_cache.pop(next(iter(self._key_cache)))
            self._key_cache[account.thumbprint] = key
        return key

    async def _account_for_kid(self, kid: str) -> Account:
        prefix = self._urls.account_prefix
        account_id = kid[len(prefix) :] if kid.startswith(prefix) else ""
        account = await self._storage.get_account(account_id) if account_id else None
        if account is None or "/" in account_id:
            raise AcmeError(
                type=ProblemType.ACCOUNT_DOES_NOT_EXIST,
                detail=f"Account {kid!r} does not exist",
            )
        if account.status != AccountStatus.VALID:
            # RFC 8555 §7.3.6: no requests are accepted for a deactivated account.
            raise account_not_valid(account.status)
        return account

    async def verify(
        self,
        request: Request,
        *,
        allow_jwk: bool,
        allow_kid: bool,
        kept_account: bool = False,
        terms_exempt: bool = False,
    ) -> VerifiedRequest:
        """Check a POST; `kept_account` lets a `kid` request use this process's copy of
        the account where the store checks it at redemption (the handler needs no more
        of the account than its ID, status and key). A `kid` request of an account that
        has not agreed to the required terms is refused unless `terms_exempt`."""
        body = self.read_body(request)
        jws = parse_flattened(body, algorithms=self._algorithms)
        require_url(jws, self.request_url(request))
        header = jws.header
        account: Account | None = None
        if header.jwk is not None:
            if not allow_jwk:
                raise malformed("This resource requires a 'kid' (account URL), not a 'jwk'")
            key = import_public_jwk(header.jwk)
        else:
            if not allow_kid:
                raise malformed("This resource requires a 'jwk', not a 'kid'")
            assert header.kid is not None
            kept = self._kept_account(header.kid) if kept_account else None
            if kept is not None:
                key = self._account_key(kept)
                # The copy is good if the request verifies with its key and the store
                # still has the account valid with that key: checked with the redemption,
                # in one statement (RFC 8555 §7.3.5, §7.3.6: a changed key or a
                # deactivation holds at once everywhere). Otherwise the account is read
                # again and the request checked as if nothing had been kept: it may be
                # signed with a key that changed through another process.
                if _signed_by(jws, key, self._algorithms) and await self._nonces.redeem(
                    header.nonce, account=kept
                ):
                    return VerifiedRequest(jws=jws, key=key, account=kept)
                self._accounts.pop(kept.id, None)
            account = await self._account_for_kid(header.kid)
            key = self._account_key(account)
            if self._keep_accounts:
                self._remember(account)
        verify_signature(jws, key, algorithms=self._algorithms)
        await self._nonces.redeem(header.nonce)
        # After signature and nonce: only the account's holder learns of it, and the
        # refused request cannot be replayed.
        terms = None if terms_exempt else self._terms
        if account is not None and terms is not None and not terms.agreed(account):
            raise terms.refusal(self._urls.account(account.id))
        return VerifiedRequest(jws=jws, key=key, account=account)

    def _kept_account(self, kid: str) -> Account | None:
        if not self._keep_accounts or not kid.startswith(self._urls.account_prefix):
            return None
        kept = self._accounts.get(kid[len(self._urls.account_prefix) :])
        if kept is not None and self._terms and not self._terms.agreed(kept):
            # It may have agreed since, through another process: read it again. A kept
            # copy that agreed stays right (the terms change only with a restart).
            return None
        return kept

    def _remember(self, account: Account) -> None:
        if len(self._accounts) >= self._key_cache_size:
            self._accounts.pop(next(iter(self._accounts)))
        self._accounts[account.id] = account


def _signed_by(jws: ParsedJws, key: JoseKey, algorithms: Sequence[str]) -> bool:
    try:
        verify_signature(jws, key, algorithms=algorithms)
    except AcmeError:
        return False
    return True

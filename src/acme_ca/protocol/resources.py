"""JSON renderings of ACME resources (RFC 8555 §7.1)."""

from __future__ import annotations

from typing import Any

from acme_ca.errors import Identifier
from acme_ca.model import Account, Authorization, AuthzStatus, Challenge, ChallengeStatus, Order
from acme_ca.protocol.messages import format_rfc3339
from acme_ca.protocol.problems import problem_document
from acme_ca.protocol.urls import Urls

__all__ = ["render_account", "render_authz", "render_challenge", "render_order"]


def _identifier(identifier: Identifier) -> dict[str, str]:
    return {"type": identifier.type, "value": identifier.value}


def render_account(account: Account, urls: Urls) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "status": str(account.status),
        "contact": list(account.contact),
        "termsOfServiceAgreed": account.tos_agreed,
        "orders": urls.account_orders(account.id),
        "createdAt": format_rfc3339(account.created_at),
    }
    if account.eab_kid is not None:
        doc["externalAccountBinding"] = {"kid": account.eab_kid}
    return doc


def render_order(order: Order, urls: Urls) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "status": str(order.status),
        "expires": format_rfc3339(order.expires),
        "identifiers": [_identifier(i) for i in order.identifiers],
        "authorizations": [urls.authz(a) for a in order.authz_ids],
        "finalize": urls.finalize(order.id),
    }
    if order.not_before is not None:
        doc["notBefore"] = format_rfc3339(order.not_before)
    if order.not_after is not None:
        doc["notAfter"] = format_rfc3339(order.not_after)
    if order.profile is not None:
        doc["profile"] = order.profile
    if order.replaces is not None:
        doc["replaces"] = order.replaces
    if order.error is not None:
        doc["error"] = problem_document(order.error)
    if order.certificate_id is not None:
        doc["certificate"] = urls.certificate(order.certificate_id)
    return doc


def render_challenge(challenge: Challenge, urls: Urls) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": str(challenge.type),
        "url": urls.challenge(challenge.authz_id, challenge.id),
        "token": challenge.token,
        "status": str(challenge.status),
    }
    if challenge.validated is not None:
        doc["validated"] = format_rfc3339(challenge.validated)
    if challenge.error is not None:
        doc["error"] = problem_document(challenge.error)
    if challenge.validation_record:
        doc["validationRecord"] = list(challenge.validation_record)
    return doc


# RFC 8555 §7.1.4: a valid authorization lists the challenge that was validated, an
# invalid one the challenge that was attempted and failed; any other lists them all.
_USED_CHALLENGE = {
    AuthzStatus.VALID: ChallengeStatus.VALID,
    AuthzStatus.INVALID: ChallengeStatus.INVALID,
}


def render_authz(authz: Authorization, urls: Urls) -> dict[str, Any]:
    challenges = authz.challenges
    used = _USED_CHALLENGE.get(authz.status)
    if used is not None:
        # All of them if none has that status (not seen; `challenges` is required).
        challenges = tuple(c for c in challenges if c.status == used) or challenges
    doc: dict[str, Any] = {
        "identifier": _identifier(authz.identifier),
        "status": str(authz.status),
        "expires": format_rfc3339(authz.expires),
        "challenges": [render_challenge(c, urls) for c in challenges],
    }
    if authz.wildcard:
        doc["wildcard"] = True
    return doc

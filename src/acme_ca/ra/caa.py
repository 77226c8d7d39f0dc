"""When CAA is checked (RFC 8659 §3): after a successful challenge, and again at
finalize for authorizations validated longer ago than the configured age.

The check itself is the VA's (`va.caa`); this module decides when, for which
account URL and method, and turns failures into one problem for the order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from acme_ca.errors import AcmeError, ProblemType, SubProblem
from acme_ca.model import Authorization, ChallengeStatus, Order
from acme_ca.ra.context import RAContext

__all__ = ["CaaPolicy"]


def _validated(authz: Authorization) -> tuple[dt.datetime | None, str | None]:
    """When and by which challenge type the authorization was validated."""
    for challenge in authz.challenges:
        if challenge.status == ChallengeStatus.VALID:
            return challenge.validated, str(challenge.type)
    return None, None


class CaaPolicy:
    def __init__(self, ctx: RAContext) -> None:
        self._ctx = ctx

    def account_uri(self, account_id: str) -> str:
        return f"{self._ctx.settings.account_url_prefix}{account_id}"

    async def check_authz(
        self, account_id: str, authz: Authorization, method: str
    ) -> AcmeError | None:
        return await self._ctx.va.check_caa(
            authz.identifier,
            account_uri=self.account_uri(account_id),
            method=method,
            wildcard=authz.wildcard,
        )

    async def recheck_order(self, order: Order, now: dt.datetime) -> None:
        """`caa` for the order unless every stale authorization still passes CAA."""
        ctx = self._ctx
        problems: list[SubProblem] = []
        for authz_id in order.authz_ids:
            authz = await ctx.storage.get_authz(authz_id)
            if authz is None:
                continue
            validated, method = _validated(authz)
            if validated is not None and now - validated <= ctx.settings.caa_recheck_after:
                continue
            error = await self.check_authz(order.account_id, authz, method or "")
            if error is not None:
                problems.extend(_subproblems(error, authz))
        if problems:
            ctx.metrics.caa_failure("finalize")
            detail = (
                problems[0].detail
                if len(problems) == 1
                else f"CAA records prevent issuance for {len(problems)} identifiers"
            )
            # `dns` when every lookup failed, `caa` when a record refused (or both kinds).
            kinds = {p.type for p in problems}
            kind = kinds.pop() if len(kinds) == 1 else ProblemType.CAA
            raise AcmeError(type=kind, detail=detail, subproblems=tuple(problems))


def _subproblems(error: AcmeError, authz: Authorization) -> Sequence[SubProblem]:
    if error.subproblems:
        return error.subproblems
    return (SubProblem(type=error.type, detail=error.detail, identifier=authz.identifier),)

"""The registration authority: every state transition of the CA, and its background jobs.

The RA never sees HTTP. It is the only writer to storage; it calls the VA and the
CA. Validation runs as a background task in the process that accepted the
challenge; a job row with a lease lets another process (or a restart) take it up
if this one dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from acme_ca.model import Account, Authorization, Challenge
from acme_ca.ra.accounts import AccountService
from acme_ca.ra.context import RAContext
from acme_ca.ra.issuance import IssuanceService
from acme_ca.ra.orders import OrderService
from acme_ca.ra.ratelimits import RateLimiter
from acme_ca.ra.renewal import RenewalService
from acme_ca.ra.revocation import RevocationService
from acme_ca.ra.validation import ValidationService
from acme_ca.storage.policy import PolicyStore

__all__ = ["RegistrationAuthority"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class RegistrationAuthority:
    def __init__(self, ctx: RAContext, *, max_concurrent_validations: int = 64) -> None:
        self.ctx = ctx
        self.accounts = AccountService(ctx)
        self.orders = OrderService(ctx)
        self.validations = ValidationService(ctx)
        self.issuance = IssuanceService(ctx)
        self.revocation = RevocationService(ctx)
        self.renewal = RenewalService.from_context(ctx)
        self.limits = RateLimiter(
            PolicyStore(ctx.storage.engines, ctx.clock), ctx.settings.rate_limits
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._validation_slots = asyncio.Semaphore(max_concurrent_validations)
        self._maintenance: asyncio.Task[None] | None = None

    # ---- background work -------------------------------------------------------

    def spawn_validation(
        self, challenge_id: str, *, subject: tuple[Authorization, Account] | None = None
    ) -> asyncio.Task[Challenge | None]:
        """Validate in the background; the task's result is the challenge as this
        validation recorded it (None if another had). `subject`: see `ValidationService.run`."""
        return self._spawn(self._validate(challenge_id, subject))

    async def _validate(
        self, challenge_id: str, subject: tuple[Authorization, Account] | None
    ) -> Challenge | None:
        async with self._validation_slots:
            return await self.validations.run(challenge_id, subject=subject)

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background job failed", exc_info=task.exception())

    async def resume_stale_jobs(self) -> int:
        """Take up jobs whose lease ran out: their process died (DESIGN.md)."""
        ctx = self.ctx
        now = ctx.clock.now()
        claimed = await ctx.storage.claim_stale_jobs(
            now=now, lease_until=now + ctx.settings.job_lease
        )
        for kind, target in claimed:
            log.info("resuming %s job for %s", kind, target)
            if kind == "validate":
                self.spawn_validation(target)
            elif kind == "issue":
                self._spawn(self.issuance.issue(target))
        return len(claimed)

    async def _maintenance_loop(self, interval: float) -> None:
        while True:
            try:
                await self.resume_stale_jobs()
                await self.ctx.storage.purge_used_nonces(self.ctx.clock.now())
                await self.limits.purge(self.ctx.clock.now())
            except Exception:
                log.exception("maintenance pass failed")
            await asyncio.sleep(interval)

    def start(self, *, maintenance_interval: float = 5.0) -> None:
        if self._maintenance is None:
            self._maintenance = asyncio.get_running_loop().create_task(
                self._maintenance_loop(maintenance_interval)
            )

    async def stop(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
            self._maintenance = None
        if self._tasks:
            # Let running validations finish briefly; their leases cover the rest.
            await asyncio.wait(list(self._tasks), timeout=5)
            for task in list(self._tasks):
                task.cancel()

    async def drain(self) -> None:
        """Wait for the background tasks of this process (tests)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

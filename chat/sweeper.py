"""The sweeper: stop the answers no live worker will finish, keeping what they saved."""

import asyncio
import logging
from dataclasses import dataclass, field

from asgiref.sync import async_to_sync
from django.conf import settings
from django.utils import timezone

from . import answers, selectors
from .bus import bus
from .errors import MessageAlreadyFinished

log = logging.getLogger("chat.sweeper")


@dataclass
class SweepSummary:
    dry_run: bool
    found: dict[int, str] = field(default_factory=dict)  # message id -> reason
    ended_elsewhere: list[int] = field(default_factory=list)  # by their worker or another sweeper
    finalized: dict[int, str] = field(default_factory=dict)  # finalized by this sweeper

    def as_dict(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "found": len(self.found),
            "ended_elsewhere": sorted(self.ended_elsewhere),
            "finalized": {str(k): v for k, v in sorted(self.finalized.items())},
            "candidates": {str(k): v for k, v in sorted(self.found.items())},
        }

    def line(self) -> str:
        if self.dry_run:
            return f"sweep (dry run): {len(self.found)} stream(s) would be stopped: " + (
                ", ".join(f"{k} ({v})" for k, v in sorted(self.found.items())) or "none")
        reasons = {}
        for reason in self.finalized.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        detail = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())) or "none"
        return (f"sweep: {len(self.found)} stream(s) found, {len(self.ended_elsewhere)} ended elsewhere, "
                f"{len(self.finalized)} finalized here ({detail})")


def sweep(*, stale_after: float, max_age: float, dry_run: bool = False, owner_wait: float | None = None) -> SweepSummary:
    summary = SweepSummary(dry_run=dry_run)
    summary.found = selectors.streams_to_sweep(stale_after=stale_after, max_age=max_age, now=timezone.now())
    if dry_run or not summary.found:
        return summary
    # A live worker stops its own answer and saves its last text: it gets a moment to.
    wait = owner_wait if owner_wait is not None else max(2 * settings.STREAM_FLUSH_INTERVAL, 1.0)
    for message_id, finalized_here in async_to_sync(_stop_all)(summary.found, wait):
        if finalized_here:
            summary.finalized[message_id] = summary.found[message_id]
            log.info("sweeper finalized message %s: cancelled %s", message_id, summary.found[message_id])
        else:
            summary.ended_elsewhere.append(message_id)
    return summary


async def _stop_all(found: dict[int, str], wait: float) -> list[tuple[int, bool]]:
    async def stop_one(message_id: int, reason: str) -> tuple[int, bool]:
        try:
            stopped = await answers.stop(message_id=message_id, reason=reason, wait=wait, force=True)
        except MessageAlreadyFinished:
            return message_id, False
        return message_id, stopped.finalized_here

    try:
        return await asyncio.gather(*(stop_one(message_id, reason) for message_id, reason in found.items()))
    finally:
        await bus.stop()  # hands every announcement to the layer before the loop goes

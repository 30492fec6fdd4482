"""The sweeper: stop the answers no live worker will finish, keeping what they saved."""

import logging
import time
from dataclasses import dataclass, field

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone

from streaming.runner import Outcome

from . import events, selectors, services
from .bus import bus, message_group, terminal_message
from .models import Message

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
    requests = []
    for message_id, reason in summary.found.items():
        try:
            message = services.message_request_cancel(message_id=message_id, reason=reason)
        except services.MessageAlreadyFinished:
            continue
        requests.append((message.worker, {"type": "stream.cancel", "message_id": message_id, "reason": reason}))
    async_to_sync(_ask_workers)(requests)
    # A live worker stops its own stream and saves its last text; give it a moment.
    if any(reason == "timeout" for reason in summary.found.values()):
        _wait_for_workers(set(summary.found), owner_wait if owner_wait is not None else max(2 * settings.STREAM_FLUSH_INTERVAL, 1.0))
    announcements = []
    for message_id, reason in summary.found.items():
        row, won = services.message_finalize(message_id=message_id, outcome=Outcome(Message.Status.CANCELLED, reason=reason))
        if won:
            summary.finalized[message_id] = reason
            announcements.append(events.terminal(row))
        else:
            summary.ended_elsewhere.append(message_id)
    async_to_sync(_announce)(announcements)
    for message_id, reason in summary.finalized.items():
        log.info("sweeper finalized message %s: cancelled %s", message_id, reason)
    return summary


def _wait_for_workers(message_ids: set[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Message.objects.filter(pk__in=message_ids, status__in=Message.ACTIVE_STATUSES).exists():
            return
        time.sleep(0.05)


async def _ask_workers(requests) -> None:
    for worker, message in requests:
        await bus.request(worker, message)


async def _announce(terminal_events) -> None:
    layer = get_channel_layer()
    for event in terminal_events:
        try:
            await layer.group_send(message_group(event["message_id"]), terminal_message(event))
        except Exception as error:  # watchers then learn it on their next resume
            log.warning("could not announce the end of message %s: %s", event["message_id"], type(error).__name__)

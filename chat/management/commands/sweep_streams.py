"""Finalize the answers that no live server process will finish (docs/protocol.md, Server processes and commands)."""

import json
import signal
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from chat.sweeper import sweep


class Command(BaseCommand):
    help = "Stop streaming answers whose worker is gone (stale heartbeat) or that are too old."

    def add_arguments(self, parser):
        parser.add_argument("--stale-after", type=float, default=None,
                            help="heartbeat age in seconds that means the worker is gone (default STREAM_STALE_AFTER)")
        parser.add_argument("--max-age", type=float, default=None,
                            help="answers older than this many seconds are stopped (default STREAM_MAX_AGE)")
        parser.add_argument("--dry-run", action="store_true", help="report what would be done, change nothing")
        parser.add_argument("--json", dest="as_json", action="store_true", help="print the summary as JSON")
        parser.add_argument("--loop", action="store_true", help="sweep again every --interval seconds until SIGTERM")
        parser.add_argument("--interval", type=float, default=60.0, help="seconds between passes with --loop")

    def handle(self, *args, stale_after, max_age, dry_run, as_json, loop, interval, **options):
        stale_after = settings.STREAM_STALE_AFTER if stale_after is None else stale_after
        max_age = settings.STREAM_MAX_AGE if max_age is None else max_age
        if not loop:
            try:
                self._report(sweep(stale_after=stale_after, max_age=max_age, dry_run=dry_run), as_json)
            except DatabaseError as error:
                raise CommandError(f"cannot reach the database: {error}".strip()) from None
            return
        stopping = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stopping.set())
        while not stopping.is_set():
            started = time.monotonic()
            try:
                self._report(sweep(stale_after=stale_after, max_age=max_age, dry_run=dry_run), as_json)
            except DatabaseError as error:
                self.stderr.write(f"sweep failed, cannot reach the database: {error}".strip())
            stopping.wait(max(interval - (time.monotonic() - started), 0))

    def _report(self, summary, as_json):
        self.stdout.write(json.dumps(summary.as_dict(), sort_keys=True) if as_json else summary.line())

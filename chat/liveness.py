"""This server process proves it is alive, and finalizes the answers of the processes
that stopped proving it (DESIGN.md principle 10).

The heartbeat is written from a thread of its own, so a busy event loop is never taken
for a dead process. The sweep of dead workers' answers runs on the loop every heartbeat,
in every worker: each answer goes through the one stop of chat/answers.py, whose
conditional write lets only one worker finalize it. So no cron is needed, and a user at
the cap whose worker was killed can send again as soon as that worker's heartbeat is
WORKER_DEAD_AFTER old, since the caps count live workers' answers only.
"""

import asyncio
import logging
import threading
from datetime import timedelta

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connection

from streaming.worker import WORKER_ID

from . import answers, selectors, services
from .models import Message

log = logging.getLogger("chat.liveness")

FORGET_DEAD_WORKERS_AFTER = timedelta(days=1)
SWEEPS_PER_PRUNE = 1000


class Liveness:
    def __init__(self):
        self._stopping = threading.Event()
        self._beating: threading.Thread | None = None
        self._sweeping: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self._beating is not None

    def start(self) -> None:
        """Start beating and sweeping; call from the server's event loop, at startup."""
        if self.running:
            return
        self._stopping.clear()
        self._beating = threading.Thread(target=self._beat, name="worker-heartbeat", daemon=True)
        self._beating.start()
        self._sweeping = asyncio.get_running_loop().create_task(self._sweep(), name="dead-worker-sweep")

    async def stop(self) -> None:
        """Stop both, and forget this worker: its answers are final by now."""
        if not self.running:
            return
        self._sweeping.cancel()
        await asyncio.gather(self._sweeping, return_exceptions=True)
        self._stopping.set()
        await asyncio.to_thread(self._beating.join, 5)
        self._beating = self._sweeping = None
        try:
            await database_sync_to_async(services.worker_forget)(worker=WORKER_ID)
        except Exception as error:  # its heartbeat just goes stale then
            log.warning("could not remove this worker's row: %s", type(error).__name__)

    def _beat(self) -> None:
        try:
            while True:
                try:
                    services.worker_beat(worker=WORKER_ID)
                except Exception as error:
                    log.warning("heartbeat not written: %s", type(error).__name__)
                    connection.close()  # the next beat reconnects
                if self._stopping.wait(settings.WORKER_HEARTBEAT):
                    return
        finally:
            connection.close()

    async def _sweep(self) -> None:
        sweeps = 0
        while True:
            await asyncio.sleep(settings.WORKER_HEARTBEAT)
            try:
                await sweep_dead_workers()
                sweeps += 1
                if sweeps % SWEEPS_PER_PRUNE == 0:
                    await database_sync_to_async(services.workers_prune)(older_than=FORGET_DEAD_WORKERS_AFTER)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("the sweep of dead workers' answers failed; it runs again soon", exc_info=True)


async def sweep_dead_workers() -> list[int]:
    """Finalize the unfinished answers of dead workers as `orphaned` (a stop stored before
    the worker died keeps its own reason); the ids found."""
    found = await database_sync_to_async(selectors.answers_of_dead_workers)()
    for message_id in found:
        await answers.stop_if_running(message_id=message_id, reason=Message.CancelReason.ORPHANED)
    if found:
        log.info("finalized %d answer(s) of dead workers", len(found))
    return found


liveness = Liveness()

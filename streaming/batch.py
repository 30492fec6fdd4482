"""Group commit: many small writes of many streams, done as one call."""

import asyncio
from collections.abc import Awaitable, Callable


class Batcher:
    """Callers `submit` an item and await its own result; every item queued while a
    call runs is served by the next single call of `run_many` (items -> results)."""

    def __init__(self, run_many: Callable[[list], Awaitable[list]]):
        self.run_many = run_many
        self._queue: list[tuple[object, asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def submit(self, item):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((item, future))
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._drain(), name="batcher")
        return await future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                results = await self.run_many([item for item, _ in batch])
            except Exception as error:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():  # its caller was cancelled; the write is done all the same
                    future.set_result(result)

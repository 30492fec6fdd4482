"""Deploys: SIGTERM (what `docker compose stop` sends, with a SIGKILL 10 s later) must end
the process within a few seconds every time, with or without Redis, under daphne and under
uvicorn, its answers finalized as `shutdown` first and their sockets told; and a healthy
Redis must never be reported unreachable."""

import asyncio
import contextlib
import signal
import time

import pytest

from tests.faults.conftest import needs_postgres_and_redis
from tests.faults.support import SocketReader, project_of, sqlite_row, start_answer
from tests.live import sign_in
from tests.multi.conftest import REDIS_ADMIN
from tests.upstream import endless_reply

pytestmark = pytest.mark.slow

EXIT_WITHIN = 5.0  # "a few seconds"; compose waits 10 before its SIGKILL
TRIES = 5
IDLE_BEFORE_FIRST = 6.5  # longer than channels-redis's 5 s blocking pop


@needs_postgres_and_redis
@pytest.mark.parametrize("kind, tries", [("daphne", TRIES), ("uvicorn", 3)])
async def test_sigterm_with_redis_ends_the_process_in_seconds_every_time(live_servers, module_upstream, layer_prefix,
                                                                         kind, tries):
    await sigterm_ends_every_answer_as_shutdown(live_servers, module_upstream, kind, tries,
                                                REDIS_URL=REDIS_ADMIN, CHANNEL_LAYER_PREFIX=f"{layer_prefix}-{kind}")


async def test_sigterm_under_uvicorn_without_redis_ends_every_answer_as_shutdown(live_servers, module_upstream):
    await sigterm_ends_every_answer_as_shutdown(live_servers, module_upstream, "uvicorn", 2)


async def sigterm_ends_every_answer_as_shutdown(live_servers, module_upstream, kind: str, tries: int, **env):
    for attempt in range(tries):
        server = live_servers(
            kind, LLM_PROVIDER="openai", LLM_BASE_URL=module_upstream.base_url, LLM_API_KEY="k",
            STREAM_FLUSH_INTERVAL=0.2, STREAM_FRAME_INTERVAL=0.02, **env,
        )
        client = sign_in(server)
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(client.close)
            reader = await SocketReader.open(stack, server, project_of(client), client)
            answers = [await start_answer(reader, module_upstream, endless_reply(delay=0.02)) for _ in range(2)]
            await reader.chunk_count_at_least(answers[-1], 3)
            if attempt == 0 and "REDIS_URL" in env:
                await asyncio.sleep(IDLE_BEFORE_FIRST)
            sent = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(_wait_or_none, server.process, EXIT_WITHIN + 5)
            took = time.monotonic() - sent
            # Uvicorn re-raises the SIGTERM it caught once it has shut down (a supervisor sees 143).
            clean = (0, -signal.SIGTERM) if kind == "uvicorn" else (0,)
            assert code in clean and took < EXIT_WITHIN, (
                f"{kind}, try {attempt + 1}: exit {code} after {took:.1f}s\n{server.output()}")
            ends = [await reader.terminal(answer_id, timeout=1) for answer_id in answers]
        assert {(e["type"], e["reason"]) for e in ends} == {("stream_cancelled", "shutdown")}
        for answer_id, end in zip(answers, ends):
            row = sqlite_row(server, answer_id)
            assert (row["status"], row["cancel_reason"], row["content"]) == ("cancelled", "shutdown", end["content"])
        assert "unreachable" not in server.output(), server.output()


def _wait_or_none(process, timeout):
    try:
        return process.wait(timeout)
    except Exception:
        process.kill()
        return None

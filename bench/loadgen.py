"""The load generator: real websocket clients (or, as a baseline, direct upstream readers)
in a process of their own.

`python -m bench.loadgen` reads one job (a JSON line) on stdin, opens its
connections, prints `READY`, waits for a `{"go": <monotonic time>}` line, runs
the job and prints `RESULT <json>`. Times are CLOCK_MONOTONIC, shared by every
process of the machine, so the orchestrator can sample CPU over the same window.

Jobs: `streams` (N concurrent streams: a steady window, then cancels at random
points with a new stream after each), `direct` (the same clients reading the
upstream themselves), `lengths` (one answer of each length), `storm` (sends and
cancels in quick succession), `churn` (many short streams, half cancelled).
"""

import asyncio
import itertools
import json
import random
import sys
import time

import httpx

from bench.clients import (
    Client, Refused, Stream, Window, close_clients, open_clients, prompt, sleep_until, stream_record,
)


# -- jobs -------------------------------------------------------------------------------------------


async def streams_job(job: dict, go_wait) -> dict:
    """N streams at `rate`: ramp, steady window (no cancels), then cancels at random points."""
    n, rate, rng = job["clients"], job["rate"], random.Random(job.get("seed", 1))
    window = Window(job)
    clients = await open_clients(job, window)
    go = await go_wait()
    streams: list[Stream] = []
    counter = itertools.count()

    refused, unstopped = [], []

    async def run(i: int, client: Client) -> None:
        await sleep_until(go + job["ramp"] * i / n)
        try:
            stream = await client.send(f"{job['name']}-{next(counter)}", 0, rate, counts_for_window=True)
        except Refused as error:
            refused.append(str(error))
            window.first_chunk()  # not one to wait for
            return
        streams.append(stream)
        await window.open_by(go + job["ramp"] + job["max_start"])
        cancel_end = window.end + job["cancel_phase"]
        low, high = job["cancel_gap"]
        while job["cancel_phase"] > 0:
            await asyncio.sleep(rng.uniform(low, high))
            if time.monotonic() >= cancel_end:
                break
            await client.cancel(stream)
            await client.until_finished(stream)
            try:
                stream = await client.send(f"{job['name']}-{next(counter)}", 0, rate)
            except Refused as error:
                refused.append(str(error))
                return
            streams.append(stream)
        stream.cancel_at = None  # the last cancel is a cleanup, not a sample
        await client.ws.send(json.dumps({"type": "cancel", "message_id": stream.message_id}))
        try:
            await client.until_finished(stream, timeout=120)
        except TimeoutError:  # reported (the seed-style baseline falls that far behind)
            unstopped.append(stream.message_id)

    await asyncio.gather(*(run(i, client) for i, client in enumerate(clients)))
    result = {
        "window": [window.start, window.end], "all_started_before_window": window.all_started,
        "window_chars": sum(c.window_chars for c in clients),
        "window_wire": sum(c.window_wire for c in clients),
        "streams": [stream_record(s) for s in streams],
        "errors": [e for c in clients for e in c.errors][:20], "refused": refused,
        "not_stopped_within_120s": len(unstopped),
    }
    await close_clients(clients)
    return result


async def direct_job(job: dict, go_wait) -> dict:
    """The same clients reading the upstream themselves, over one httpx client."""
    n, rate = job["clients"], job["rate"]
    window = Window(job)
    state = {"chars": 0}
    samples = []
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0)) as client:
        warm = {"model": "bench", "stream": True, "messages": [{"role": "user", "content": prompt("warm", 1, 1000)}]}
        await client.post(job["upstream"] + "/chat/completions", json=warm)  # the client's first-use costs
        go = await go_wait()

        async def run(i: int) -> None:
            await sleep_until(go + job["ramp"] * i / n)
            body = {"model": "bench", "stream": True,
                    "messages": [{"role": "user",
                                  "content": prompt(f"{job['name']}-{i}", 0, rate, job.get("clock", "aligned"))}]}
            sent_at = time.monotonic()
            first = None
            async with client.stream("POST", job["upstream"] + "/chat/completions", json=body) as response:
                pending = b""
                async for data in response.aiter_bytes():
                    pending += data
                    *events, pending = pending.split(b"\n\n")
                    now = time.monotonic()
                    for event in events:
                        if not event.startswith(b"data: {"):
                            continue
                        content = json.loads(event[6:])["choices"][0]["delta"].get("content")
                        if content:
                            if first is None:
                                first = now
                                samples.append(first - sent_at)
                                window.first_chunk()
                            if now in window:
                                state["chars"] += len(content)
                    if now >= window.end:
                        break

        await asyncio.gather(*(run(i) for i in range(n)))
    return {"window": [window.start, window.end], "all_started_before_window": window.all_started,
            "window_chars": state["chars"], "ttfc": samples}


async def lengths_job(job: dict, go_wait) -> dict:
    """One answer of each length, one after the other, on one socket."""
    clients = await open_clients({**job, "clients": 1}, Window())
    client = clients[0]
    await go_wait()
    results = []
    for chunks in job["lengths"]:
        stream = await client.send(f"{job['name']}-{chunks}", chunks, job["rate"])
        await client.until_finished(stream, timeout=job.get("timeout", 300))
        record = stream_record(stream)
        record["chunks"] = chunks
        record["content_bytes"] = len((stream.terminal or {}).get("content", "").encode())
        record["chunk_count"] = (stream.terminal or {}).get("chunk_count")
        results.append(record)
    await close_clients(clients)
    return {"lengths": results}


async def storm_job(job: dict, go_wait) -> dict:
    """Sends and cancels in quick succession; every answer must end exactly once."""
    rng = random.Random(job.get("seed", 7))
    clients = await open_clients(job, Window(), keep_text=True)
    await go_wait()
    streams: list[Stream] = []
    cancels = []

    async def run(ci: int, client: Client) -> None:
        mine = []
        for k in range(job["sends"]):
            try:
                stream = await client.send(f"storm-{ci}-{k}", rng.randint(5, 40), job["rate"])
            except Refused:
                continue  # counted with the error frames
            mine.append(stream)
            cancels.append(asyncio.get_running_loop().create_task(cancel_later(client, stream, rng.uniform(0, job["cancel_within"]))))
            await asyncio.sleep(rng.uniform(0, 0.02))
        streams.extend(mine)

    async def cancel_later(client: Client, stream: Stream, delay: float) -> None:
        await asyncio.sleep(delay)
        await client.cancel(stream)

    await asyncio.gather(*(run(i, c) for i, c in enumerate(clients)))
    await asyncio.gather(*cancels)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(s.terminal is None or (s.cancel_at and s.cancel_reply is None and s.terminal["type"] != "stream_cancelled") for s in streams):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # any duplicate terminal event would arrive meanwhile
    records = []
    for s in streams:
        record = stream_record(s)
        record.update(events=s.events, content=(s.terminal or {}).get("content"), reason=(s.terminal or {}).get("reason"),
                      deltas="".join(s.deltas or []), seqs_ok=s.seqs == list(range(1, len(s.seqs) + 1)))
        records.append(record)
    errors = [e for c in clients for e in c.errors]
    await close_clients(clients)
    return {"streams": records, "errors": errors[:20], "error_count": len(errors)}


async def churn_job(job: dict, go_wait) -> dict:
    """`total` short streams over `clients` sockets; every other one cancelled at a random point."""
    rng = random.Random(job.get("seed", 11))
    clients = await open_clients(job, Window())
    await go_wait()
    counter = itertools.count()
    outcomes: dict[str, int] = {}
    chunks, rate = job["chunks"], job["rate"]

    async def run(client: Client) -> None:
        while (i := next(counter)) < job["total"]:
            try:
                stream = await client.send(f"churn-{i}", chunks, rate)
            except Refused as error:
                outcomes[f"refused ({error})"] = outcomes.get(f"refused ({error})", 0) + 1
                continue
            if i % 2:
                await asyncio.sleep(rng.uniform(0, chunks / rate))
                await client.cancel(stream)
            await client.until_finished(stream)
            if stream.cancel_at is not None and stream.terminal["type"] != "stream_cancelled":
                await client.until_cancel_answered(stream)
            key = stream.terminal["type"] if stream.cancel_reply is None else f"{stream.terminal['type']} (cancel: {stream.cancel_reply})"
            outcomes[key] = outcomes.get(key, 0) + 1
            client.by_id.pop(stream.message_id, None)

    await asyncio.gather(*(run(c) for c in clients))
    errors = [e for c in clients for e in c.errors]
    await close_clients(clients)
    return {"outcomes": outcomes, "errors": errors[:20], "error_count": len(errors)}


JOBS = {"streams": streams_job, "direct": direct_job, "lengths": lengths_job, "storm": storm_job, "churn": churn_job}


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**28)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    job = json.loads(await reader.readline())

    async def go_wait() -> float:
        print("READY", flush=True)
        go = json.loads(await reader.readline())["go"]
        await sleep_until(go)
        return go

    result = await JOBS[job["kind"]](job, go_wait)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())

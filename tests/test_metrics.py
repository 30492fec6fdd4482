"""/metrics in Prometheus format, for staff or the local host; one log line per finished stream."""

import asyncio
import logging
import time

import pytest

from streaming import metrics
from tests.helpers import receive_until, send_prompt
from tests.upstream import endless_reply, error_reply

pytestmark = pytest.mark.django_db(transaction=True)


def sample(text: str, name: str, **labels) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_it_counts_finished_streams_errors_and_cancel_latency(llm, api, connect, project, user, caplog):
    before = (await api.get("/metrics")).text
    llm.enqueue(endless_reply(delay=0.005), error_reply(429, {"error": {"message": "slow down"}}))
    ws = await connect(project, user)
    answer_id = (await send_prompt(ws))["assistant_message"]["id"]
    await receive_until(ws, "message_chunk")
    with caplog.at_level(logging.INFO, logger="streaming.finished"):
        logging.getLogger("streaming.finished").addHandler(caplog.handler)
        await ws.send_json_to({"type": "cancel", "message_id": answer_id})
        await receive_until(ws, "stream_cancelled")
        await send_prompt(ws)
        await receive_until(ws, "stream_error")
        logging.getLogger("streaming.finished").removeHandler(caplog.handler)
    after = (await api.get("/metrics")).text
    assert sample(after, "stopchat_streams_finished_total", status="cancelled", reason="user") == \
        sample(before, "stopchat_streams_finished_total", status="cancelled", reason="user") + 1
    assert sample(after, "stopchat_upstream_errors_total", error_type="upstream") == \
        sample(before, "stopchat_upstream_errors_total", error_type="upstream") + 1
    assert sample(after, "stopchat_cancel_latency_seconds_count") == sample(before, "stopchat_cancel_latency_seconds_count") + 1
    for stage in ("upstream_aborted", "task_cancelled", "row_final", "event_written"):  # the stop's stages, each once
        assert sample(after, "stopchat_stop_stage_seconds_count", stage=stage) == \
            sample(before, "stopchat_stop_stage_seconds_count", stage=stage) + 1, stage
    assert sample(after, "stopchat_time_to_first_chunk_seconds_count") >= 1
    assert sample(after, "stopchat_flushes_total", result="ok") >= 0
    assert "stopchat_active_streams 0.0" in after
    lines = {}
    for record in caplog.records:
        if record.name == "streaming.finished":
            lines[record.message_id] = record.__dict__
    cancelled, failed = lines[answer_id], lines[max(lines)]
    assert (cancelled["status"], cancelled["reason"]) == ("cancelled", "user")
    assert cancelled["chunks"] >= 1 and cancelled["duration_ms"] >= 0 and cancelled["chars"] > 0
    assert (failed["status"], failed["reason"]) == ("error", "upstream")


async def test_the_loop_lag_shows_a_blocked_event_loop(api):
    before = (await api.get("/metrics")).text
    metrics.lag_monitor.start()
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # the loop runs nothing else meanwhile: its 100 ms timer fires about 250 ms late
        await asyncio.sleep(0.15)
    finally:
        metrics.lag_monitor.stop()
    after = (await api.get("/metrics")).text
    late = sample(after, "stopchat_event_loop_lag_seconds_sum") - sample(before, "stopchat_event_loop_lag_seconds_sum")
    assert late >= 0.15
    assert sample(after, "stopchat_event_loop_lag_seconds_count") >= sample(before, "stopchat_event_loop_lag_seconds_count") + 2


def test_it_hides_metrics_from_remote_visitors_who_are_not_staff(client, user):
    client.force_login(user)
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 404
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    user.is_staff = True
    user.save()
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.9")
    assert response.status_code == 200 and b"stopchat_active_streams" in response.content

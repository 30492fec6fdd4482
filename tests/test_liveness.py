"""Worker liveness, called directly: heartbeats, caps that ignore dead workers' answers, and
the sweep every worker runs to finalize them (chat/liveness.py)."""

import asyncio
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from chat import answers, selectors, services
from chat.errors import LimitExceeded, RateLimited
from chat.liveness import Liveness, sweep_dead_workers
from chat.models import Message, Worker
from streaming.worker import WORKER_ID

pytestmark = pytest.mark.django_db(transaction=True)


def streaming(project, worker: str, **fields) -> Message:
    now = timezone.now()
    return Message.objects.create(project=project, role="assistant", status="streaming", worker=worker,
                                  started_at=now, last_chunk_at=now, **fields)


def beat(worker: str, seconds_ago: float = 0) -> None:
    Worker.objects.update_or_create(id=worker, defaults={"heartbeat_at": timezone.now() - timedelta(seconds=seconds_ago)})


def test_a_worker_is_alive_while_its_heartbeat_is_fresh(settings):
    settings.WORKER_DEAD_AFTER = 8
    services.worker_beat(worker="a:1:1")
    assert selectors.worker_is_alive(worker="a:1:1")
    beat("a:1:1", seconds_ago=9)
    assert not selectors.worker_is_alive(worker="a:1:1")
    assert not selectors.worker_is_alive(worker="never-seen:1:1")
    assert selectors.worker_is_alive(worker=WORKER_ID)  # this process, heartbeat or not
    services.worker_forget(worker="a:1:1")
    assert not Worker.objects.filter(id="a:1:1").exists()


def prompt(user, project):
    return services.chat_prompt_create(user=user, project=project, content="hi", include_context=False,
                                       context_files=[], provider="demo", model="demo")


def test_the_caps_count_only_the_answers_of_live_workers(user, project, settings):
    settings.STREAM_MAX_PER_USER = 3
    dead = [streaming(project, "dead:1:1") for _ in range(3)]
    beat("dead:1:1", seconds_ago=settings.WORKER_DEAD_AFTER + 1)
    created = prompt(user, project)
    assert created.answer.status == "pending" and created.evict == []

    beat("alive:1:1")
    for _ in range(2):
        streaming(project, "alive:1:1")
    with pytest.raises(LimitExceeded, match="at most 3"):
        prompt(user, project)  # 2 alive + the one just created here
    assert all(Message.objects.get(pk=m.pk).status == "streaming" for m in dead)


def test_the_rate_counts_the_last_minute_and_waits_for_the_oldest_of_the_latest_sends(user, project, settings):
    settings.STREAM_SENDS_PER_MINUTE = 2
    now = timezone.now()
    for seconds_ago in (70, 50, 10):  # the first is outside the minute; finished answers count too
        Message.objects.create(project=project, role="assistant", status="complete", worker=WORKER_ID,
                               created_at=now - timedelta(seconds=seconds_ago))
    with pytest.raises(RateLimited) as refused:
        prompt(user, project)
    assert 9 <= refused.value.retry_after <= 10  # when the one of 50 s ago leaves the minute
    settings.STREAM_SENDS_PER_MINUTE = 3
    assert prompt(user, project).answer.status == "pending"


async def test_the_sweep_finalizes_dead_workers_answers_as_orphaned_with_their_text(user, project, settings):
    def rows():
        beat("dead:1:1", seconds_ago=settings.WORKER_DEAD_AFTER + 1)
        beat("alive:1:1")
        return (streaming(project, "dead:1:1", content="saved so far", chunk_count=4),
                streaming(project, "alive:1:1", content="still going"),
                streaming(project, "gone-without-a-row:1:1", content=""),
                streaming(project, WORKER_ID, content="mine"))

    dead, alive, rowless, mine = await database_sync_to_async(rows)()
    found = await sweep_dead_workers()
    assert sorted(found) == sorted([dead.pk, rowless.pk])
    after = {m.pk: m for m in await database_sync_to_async(list)(Message.objects.all())}
    assert (after[dead.pk].status, after[dead.pk].cancel_reason, after[dead.pk].content) == (
        "cancelled", "orphaned", "saved so far")
    assert after[dead.pk].display_content == "saved so far\n\n*[Response stopped: orphaned]*"
    assert after[rowless.pk].status == "cancelled"
    assert after[alive.pk].status == after[mine.pk].status == "streaming"


async def test_a_stop_the_user_asked_for_before_the_worker_died_keeps_its_reason(user, project, settings):
    def orphan_the_user_cancelled():
        beat("dead:1:1", seconds_ago=settings.WORKER_DEAD_AFTER + 1)
        return streaming(project, "dead:1:1", content="half", cancel_requested_at=timezone.now(),
                         cancel_requested_reason="user")

    message = await database_sync_to_async(orphan_the_user_cancelled)()
    await sweep_dead_workers()
    row = await database_sync_to_async(Message.objects.get)(pk=message.pk)
    assert (row.status, row.cancel_reason, row.content) == ("cancelled", "user", "half")
    assert row.display_content.endswith("*[Response cancelled by user]*")


async def test_two_workers_sweeping_at_once_finalize_each_answer_once(user, project, settings, monkeypatch):
    def orphans():
        beat("dead:1:1", seconds_ago=settings.WORKER_DEAD_AFTER + 1)
        return [streaming(project, "dead:1:1", content=f"text {i}").pk for i in range(10)]

    ids = await database_sync_to_async(orphans)()
    wins = []
    finalize = answers.finalize

    async def counted(**kwargs):
        ending, won = await finalize(**kwargs)
        wins.append((kwargs["message_id"], won))
        return ending, won

    monkeypatch.setattr(answers, "finalize", counted)
    await asyncio.gather(sweep_dead_workers(), sweep_dead_workers())
    assert sorted(message_id for message_id, won in wins if won) == sorted(ids)
    statuses = await database_sync_to_async(list)(Message.objects.filter(pk__in=ids).values_list("status", flat=True))
    assert set(statuses) == {"cancelled"}


async def test_a_running_worker_beats_until_it_stops_then_forgets_itself(settings):
    settings.WORKER_HEARTBEAT = 0.05
    liveness = Liveness()
    liveness.start()
    try:
        for _ in range(300):
            if await database_sync_to_async(Worker.objects.filter(id=WORKER_ID).exists)():
                break
            await asyncio.sleep(0.01)
        first = (await database_sync_to_async(Worker.objects.get)(id=WORKER_ID)).heartbeat_at
        await asyncio.sleep(0.2)
        assert (await database_sync_to_async(Worker.objects.get)(id=WORKER_ID)).heartbeat_at > first
    finally:
        await liveness.stop()
    assert not await database_sync_to_async(Worker.objects.filter(id=WORKER_ID).exists)()
    assert not liveness.running

"""The write services, the selectors and the sweeper, called directly (no socket, no process)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from chat import selectors, services
from chat.errors import LimitExceeded, MessageAlreadyFinished, ServiceError
from chat.models import Message, ProjectFile, Worker
from chat.sweeper import sweep
from streaming.ends import Outcome
from streaming.worker import WORKER_ID

pytestmark = pytest.mark.django_db(transaction=True)


def prompt(user, project, content="hi", **fields):
    return services.chat_prompt_create(user=user, project=project, content=content, include_context=False,
                                       context_files=[], provider="demo", model="demo", **fields)


def answer(project, status="streaming", worker=WORKER_ID, **fields):
    return Message.objects.create(project=project, role="assistant", status=status, worker=worker, **fields)


class TestPrompt:
    def test_it_stores_the_prompt_and_a_pending_answer_and_builds_the_conversation(self, user, project):
        earlier = Message.objects.create(project=project, role="user", content="earlier question")
        answer(project, status="cancelled", cancel_reason="user", content="half an answer", reply_to=earlier)
        failed = Message.objects.create(project=project, role="user", content="a question whose answer failed")
        answer(project, status="error", content="", reply_to=failed)  # an answer with no text is left out
        created = prompt(user, project, "and now?")
        assert (created.user_message.role, created.user_message.content) == ("user", "and now?")
        assert (created.answer.status, created.answer.worker, created.answer.provider) == ("pending", WORKER_ID, "demo")
        assert created.answer.reply_to == created.user_message
        assert created.messages == [
            {"role": "user", "content": "earlier question"},
            {"role": "assistant", "content": "half an answer"},  # as produced, without its marker
            {"role": "user", "content": "a question whose answer failed"},
            {"role": "user", "content": "and now?"},
        ]

    def test_it_puts_the_named_context_files_first_and_names_a_few_missing_ones(self, user, project):
        ProjectFile.objects.create(project=project, name="a.txt", content="alpha")
        ProjectFile.objects.create(project=project, name="b.txt", content="beta")
        created = services.chat_prompt_create(user=user, project=project, content="q", include_context=False,
                                              context_files=["b.txt"], provider="demo", model="demo")
        assert created.messages[0] == {"role": "system", "content": "Project files for context:\n\n--- b.txt ---\nbeta"}
        with pytest.raises(ServiceError, match=r"'x1', 'x2', 'x3' and 2 more"):
            services.chat_prompt_create(user=user, project=project, content="q", include_context=True,
                                        context_files=["x1", "x2", "x3", "x4", "x5"], provider="demo", model="demo")

    def test_at_the_user_cap_it_refuses_or_names_the_oldest_to_stop(self, user, project, settings):
        settings.STREAM_MAX_PER_USER = 2
        first, second = answer(project), answer(project)
        answer(project, status="complete")  # finished answers do not count
        with pytest.raises(LimitExceeded, match="2 answers streaming"):
            prompt(user, project)
        settings.STREAM_LIMIT_POLICY = "cancel_oldest"
        assert prompt(user, project).evict == [first.pk]
        assert prompt(user, project).evict == [first.pk, second.pk]  # the previous prompt's answer counts too


class TestStreamWrites:
    def test_starts_move_pending_answers_to_streaming_once_in_one_call(self, project):
        first, second = answer(project, status="pending"), answer(project, status="pending")
        assert services.message_start_many(message_ids=[first.pk, second.pk]) == [True, True]
        assert services.message_start_many(message_ids=[first.pk]) == [False]
        Message.objects.filter(pk=second.pk).update(status="cancelled")
        third = answer(project, status="pending")
        assert services.message_start_many(message_ids=[second.pk, third.pk]) == [False, True]
        row = Message.objects.get(pk=first.pk)
        assert row.status == "streaming" and row.started_at is not None and row.last_chunk_at is not None

    def test_a_flush_appends_each_streams_text_in_one_call_and_says_which_must_stop(self, project):
        running, asked, final = answer(project, content="a"), answer(project, content="b"), answer(project)
        Message.objects.filter(pk=asked.pk).update(cancel_requested_at=timezone.now(), cancel_requested_reason="admin")
        Message.objects.filter(pk=final.pk).update(status="complete")
        reasons = services.message_flush_many(flushes=[(running.pk, "bc", 3), (asked.pk, "x", 1), (final.pk, "y", 1),
                                                       (999_999, "z", 1)])
        assert reasons == [None, "admin", "user", "orphaned"]
        assert Message.objects.get(pk=running.pk).content == "abc"
        assert Message.objects.get(pk=running.pk).chunk_count == 3
        assert Message.objects.get(pk=asked.pk).content == "b"  # a stopping row takes no more text
        assert services.message_flush_many(flushes=[(running.pk, "d", 4)]) == [None]

    def test_the_first_finalize_wins_and_its_text_is_not_read_back(self, project):
        message = answer(project, content="saved so far")
        row, won = services.message_finalize(message_id=message.pk, outcome=Outcome("cancelled", reason="user"),
                                             content="the whole text", chunk_count=7)
        assert won and (row.status, row.cancel_reason, row.content, row.chunk_count) == (
            "cancelled", "user", "the whole text", 7)
        again, won_again = services.message_finalize(message_id=message.pk, outcome=Outcome("complete"),
                                                     content="something else")
        assert not won_again and (again.status, again.content) == ("cancelled", "the whole text")

    def test_an_error_keeps_the_safe_text_for_users_and_the_upstreams_for_staff(self, project):
        message = answer(project)
        row, _ = services.message_finalize(message_id=message.pk, outcome=Outcome(
            "error", error_type="upstream", detail="The model server rejected the request (401).",
            internal="401 from api: key [redacted]"))
        assert (row.error_type, row.error_detail, row.error_internal) == (
            "upstream", "The model server rejected the request (401).", "401 from api: key [redacted]")
        assert row.display_content == "\n\n*[Error: The model server rejected the request (401).]*"

    def test_a_stop_request_is_stored_once_and_says_whether_the_producer_is_alive(self, project, settings):
        mine, theirs = answer(project), answer(project, worker="dead:1:1")
        row, alive = services.message_request_stop(message_id=mine.pk, reason="user")
        assert alive and (row.cancel_requested_reason, row.status) == ("user", "streaming")
        services.message_request_stop(message_id=mine.pk, reason="limit")
        assert Message.objects.get(pk=mine.pk).cancel_requested_reason == "user"  # the first request stays
        assert services.message_request_stop(message_id=theirs.pk, reason="user")[1] is False
        Message.objects.filter(pk=mine.pk).update(status="complete")
        with pytest.raises(MessageAlreadyFinished) as finished:
            services.message_request_stop(message_id=mine.pk, reason="user")
        assert finished.value.event["type"] == "stream_complete"


class TestSweep:
    @pytest.fixture
    def rows(self, project, settings):
        long_ago = timezone.now() - timedelta(hours=1)
        Worker.objects.create(id="alive:1:1")
        return {
            "orphan": answer(project, worker="dead:1:1", content="kept", last_chunk_at=long_ago),
            "too_old": answer(project, worker="dead:1:1", content="old", created_at=long_ago,
                              last_chunk_at=timezone.now()),
            "fresh": answer(project, worker="alive:1:1", content="going", last_chunk_at=timezone.now()),
        }

    def test_it_finds_stale_and_too_old_answers(self, rows):
        found = selectors.streams_to_sweep(stale_after=60, max_age=600, now=timezone.now())
        assert found == {rows["orphan"].pk: "orphaned", rows["too_old"].pk: "timeout"}

    def test_a_dry_run_changes_nothing(self, rows):
        summary = sweep(stale_after=60, max_age=600, dry_run=True)
        assert summary.found == {rows["orphan"].pk: "orphaned", rows["too_old"].pk: "timeout"}
        assert summary.finalized == {} and Message.objects.filter(status="streaming").count() == 3

    def test_it_finalizes_what_no_live_worker_finishes_keeping_its_text(self, rows):
        summary = sweep(stale_after=60, max_age=600, owner_wait=0.1)
        assert summary.finalized == {rows["orphan"].pk: "orphaned", rows["too_old"].pk: "timeout"}
        orphan = Message.objects.get(pk=rows["orphan"].pk)
        assert (orphan.status, orphan.cancel_reason, orphan.content) == ("cancelled", "orphaned", "kept")
        assert Message.objects.get(pk=rows["fresh"].pk).status == "streaming"
        again = sweep(stale_after=60, max_age=600, owner_wait=0.1)
        assert again.found == {} and again.finalized == {}


class TestVersionsContinuationsAndEdits:
    @pytest.fixture
    def turn(self, project):
        """A prompt answered by a stopped answer."""
        prompt = Message.objects.create(project=project, role="user", content="Tell me a story")
        stopped = answer(project, status="cancelled", cancel_reason="user", content="Once upon ", reply_to=prompt)
        return prompt, stopped

    def again(self, user, project, message_id, continuing):
        return services.answer_again(user=user, project=project, message_id=message_id, continuing=continuing,
                                     provider="demo", model="demo")

    def test_continue_asks_to_go_on_from_the_partial_and_later_prompts_see_the_joined_text(self, user, project, turn):
        prompt, stopped = turn
        more = self.again(user, project, stopped.pk, continuing=True)
        assert (more.answer.continues, more.answer.reply_to, more.user_message) == (stopped, prompt, prompt)
        assert more.messages[-2:] == [{"role": "user", "content": "Tell me a story"},
                                      {"role": "assistant", "content": "Once upon ", "partial": True}]
        Message.objects.filter(pk=more.answer.pk).update(status="cancelled", cancel_reason="user", content="a time")
        third = self.again(user, project, more.answer.pk, continuing=True)
        assert third.messages[-1]["content"] == "Once upon a time"  # the whole chain so far
        Message.objects.filter(pk=third.answer.pk).update(status="complete", content=", the end.")
        later = prompt_for(user, project, "And then?")
        assert later.messages[-3:] == [{"role": "user", "content": "Tell me a story"},
                                       {"role": "assistant", "content": "Once upon a time, the end."},
                                       {"role": "user", "content": "And then?"}]

    def test_only_a_finished_stopped_or_failed_answer_without_a_continuation_can_be_continued(self, user, project, turn):
        prompt, stopped = turn
        self.again(user, project, stopped.pk, continuing=True)
        with pytest.raises(ServiceError, match="continued already"):
            self.again(user, project, stopped.pk, continuing=True)
        complete = answer(project, status="complete", content="done", reply_to=prompt, selected=False)
        with pytest.raises(ServiceError, match="stopped or failed"):
            self.again(user, project, complete.pk, continuing=True)
        running = answer(project, reply_to=prompt, selected=False)
        with pytest.raises(ServiceError, match="still being written"):
            self.again(user, project, running.pk, continuing=False)

    def test_regenerate_adds_a_version_that_later_prompts_see_until_another_is_shown(self, user, project, turn):
        prompt, stopped = turn
        second = self.again(user, project, stopped.pk, continuing=False)
        assert second.answer.continues is None and second.answer.selected
        assert second.messages[-1] == {"role": "user", "content": "Tell me a story"}  # the prompt, not the old answer
        assert not Message.objects.get(pk=stopped.pk).selected
        Message.objects.filter(pk=second.answer.pk).update(status="complete", content="A new story.")
        assert prompt_for(user, project, "More").messages[1] == {"role": "assistant", "content": "A new story."}
        services.version_select(project=project, message_id=stopped.pk)
        assert prompt_for(user, project, "More").messages[1] == {"role": "assistant", "content": "Once upon "}
        assert list(Message.objects.filter(reply_to=prompt, selected=True)) == [Message.objects.get(pk=stopped.pk)]

    def test_an_edit_replaces_the_prompt_and_everything_after_it_and_keeps_the_rows(self, user, project, turn):
        prompt, stopped = turn
        next_prompt = prompt_for(user, project, "Go on")
        Message.objects.filter(pk=next_prompt.answer.pk).update(status="complete", content="It went on.")
        edited = services.chat_prompt_create(user=user, project=project, content="Tell me a poem",
                                             include_context=False, context_files=[], provider="demo", model="demo",
                                             edit_of=prompt.pk)
        assert sorted(edited.superseded) == sorted([prompt.pk, stopped.pk, next_prompt.user_message.pk,
                                                    next_prompt.answer.pk])
        assert edited.messages == [{"role": "user", "content": "Tell me a poem"}]
        assert Message.objects.filter(superseded_at__isnull=False).count() == 4  # kept, marked
        assert [m.pk for m in selectors.visible_messages(project=project)] == [edited.user_message.pk,
                                                                               edited.answer.pk]

    def test_an_edit_waits_for_a_running_answer_after_it_to_stop(self, user, project, turn):
        prompt, _ = turn
        answer(project, reply_to=prompt, selected=False)  # still streaming
        with pytest.raises(ServiceError, match="stop it first"):
            services.chat_prompt_create(user=user, project=project, content="x", include_context=False,
                                        context_files=[], provider="demo", model="demo", edit_of=prompt.pk)


def prompt_for(user, project, content):
    return services.chat_prompt_create(user=user, project=project, content=content, include_context=False,
                                       context_files=[], provider="demo", model="demo")

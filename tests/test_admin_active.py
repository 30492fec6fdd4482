"""The admin's Active streams page: what runs now, in any process, and a Stop button for each."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from chat import answers
from chat.models import Message, Project, Worker

pytestmark = pytest.mark.django_db(transaction=True)

ACTIVE_URL = reverse("admin:chat_message_active")


@pytest.fixture
def project(user):
    return Project.objects.create(owner=user, name="Night shift")


@pytest.fixture
def orphan(project):
    """A streaming row that no task produces: its worker died and its heartbeat went stale."""
    now = timezone.now()
    heartbeat = now - timedelta(seconds=settings.STREAM_STALE_AFTER + 60)
    return Message.objects.create(
        project=project, role="assistant", status="streaming", content="kept after the stop", chunk_count=7,
        started_at=heartbeat - timedelta(seconds=42), last_chunk_at=heartbeat, worker="elsewhere:4242:1",
    )


@pytest.fixture
def complete(project):
    return Message.objects.create(project=project, role="assistant", status="complete", content="done")


def test_it_sends_a_non_staff_user_to_the_admin_login(client, user):
    client.force_login(user)
    response = client.get(ACTIVE_URL)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_it_refuses_a_stop_from_a_non_staff_user(client, user, orphan):
    client.force_login(user)
    response = client.post(reverse("admin:chat_message_stop", args=[orphan.pk]))
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))
    assert Message.objects.get(pk=orphan.pk).status == "streaming"


def test_it_lists_streaming_rows_from_the_database_and_not_finished_ones(admin_client, orphan, complete):
    page = admin_client.get(ACTIVE_URL)
    text = page.content.decode()
    assert page.status_code == 200
    assert f'data-message-id="{orphan.pk}"' in text
    assert f'data-message-id="{complete.pk}"' not in text
    assert "Night shift" in text and "alice" in text and "elsewhere:4242:1" in text
    row = page.context["rows"][0]
    assert row["message"].chunk_count == 7
    stale_after = settings.STREAM_STALE_AFTER + 60
    assert row["age"].endswith(" s") and float(row["age"][:-2]) >= stale_after + 42
    assert stale_after <= float(row["heartbeat"][:-2]) < stale_after + 42


def test_it_shows_a_stored_cancel_request(admin_client, orphan):
    Message.objects.filter(pk=orphan.pk).update(cancel_requested_at=timezone.now(), cancel_requested_reason="timeout")
    assert "yes (timeout)" in admin_client.get(ACTIVE_URL).content.decode()


def test_it_says_when_nothing_streams(admin_client, complete):
    assert "No answer is streaming right now." in admin_client.get(ACTIVE_URL).content.decode()


def test_it_is_linked_from_the_admin_index_and_the_message_list(admin_client):
    assert ACTIVE_URL in admin_client.get(reverse("admin:index")).content.decode()
    assert ACTIVE_URL in admin_client.get(reverse("admin:chat_message_changelist")).content.decode()


def test_its_stop_button_finalizes_an_orphan_keeping_its_content(admin_client, orphan):
    response = admin_client.post(reverse("admin:chat_message_stop", args=[orphan.pk]), follow=True)
    assert response.redirect_chain == [(ACTIVE_URL, 302)]
    assert f"Stopped message {orphan.pk}." in response.content.decode()
    stopped = Message.objects.get(pk=orphan.pk)
    assert (stopped.status, stopped.cancel_reason, stopped.content) == ("cancelled", "admin", "kept after the stop")
    assert stopped.finished_at is not None


def test_its_stop_button_says_when_the_answer_already_finished(admin_client, complete):
    response = admin_client.post(reverse("admin:chat_message_stop", args=[complete.pk]), follow=True)
    assert f"Message {complete.pk} had already finished." in response.content.decode()
    assert Message.objects.get(pk=complete.pk).status == "complete"


def test_its_stop_button_only_answers_post(admin_client, orphan):
    assert admin_client.get(reverse("admin:chat_message_stop", args=[orphan.pk])).status_code == 405


@pytest.fixture
def elsewhere(project, monkeypatch):
    """A streaming row of another process that is alive (fresh heartbeat) but does not answer."""
    monkeypatch.setattr(answers, "STOP_WAIT", 0.3)
    now = timezone.now()
    Worker.objects.create(id="elsewhere:4242:1")
    return Message.objects.create(
        project=project, role="assistant", status="streaming", content="so far", chunk_count=2,
        started_at=now, last_chunk_at=now, worker="elsewhere:4242:1",
    )


def test_its_stop_button_says_when_another_process_has_not_confirmed_yet(admin_client, elsewhere):
    response = admin_client.post(reverse("admin:chat_message_stop", args=[elsewhere.pk]), follow=True)
    assert f"Stop of message {elsewhere.pk} requested; its server process has not confirmed it yet." in response.content.decode()
    row = Message.objects.get(pk=elsewhere.pk)
    assert (row.status, row.cancel_requested_reason) == ("streaming", "admin") and row.cancel_requested_at is not None


def test_the_stop_action_counts_stops_not_confirmed_yet(admin_client, elsewhere):
    response = admin_client.post(reverse("admin:chat_message_changelist"), {
        "action": "stop_streams", "_selected_action": [elsewhere.pk],
    }, follow=True)
    assert "Stopped 0 stream(s); 0 had already finished. 1 will stop when their server process sees the request." in (
        response.content.decode()
    )

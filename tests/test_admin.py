"""The admin answers "which answers were cancelled, why, and what had been produced"."""

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from chat.models import Message, Project

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def messages(user):
    project = Project.objects.create(owner=user, name="Support bot")
    return {
        "cancelled": Message.objects.create(project=project, role="assistant", status="cancelled",
                                            cancel_reason="timeout", content="Half an answer about llamas"),
        "complete": Message.objects.create(project=project, role="assistant", status="complete",
                                           content="A whole answer about alpacas"),
        "orphan": Message.objects.create(project=project, role="assistant", status="streaming",
                                         content="saved before the worker died", worker="gone:1:1",
                                         last_chunk_at=timezone.now() - timedelta(hours=1)),
    }


def test_it_filters_cancelled_messages_and_shows_reason_and_partial(admin_client, messages):
    page = admin_client.get(reverse("admin:chat_message_changelist"), {"status__exact": "cancelled"})
    text = page.content.decode()
    assert page.status_code == 200
    assert "Half an answer about llamas" in text and "timeout" in text
    assert "alpacas" not in text


def test_it_searches_content_and_filters_by_reason(admin_client, messages):
    found = admin_client.get(reverse("admin:chat_message_changelist"), {"q": "alpacas"}).content.decode()
    assert "alpacas" in found and "llamas" not in found
    by_reason = admin_client.get(reverse("admin:chat_message_changelist"), {"cancel_reason__exact": "timeout"})
    assert "llamas" in by_reason.content.decode()


def test_it_shows_a_message_with_its_display_marker(admin_client, messages):
    page = admin_client.get(reverse("admin:chat_message_change", args=[messages["cancelled"].pk]))
    assert "*[Response stopped: timeout]*" in page.content.decode()


def test_it_stops_selected_streams_through_the_cancel_service(admin_client, messages):
    response = admin_client.post(reverse("admin:chat_message_changelist"), {
        "action": "stop_streams",
        "_selected_action": [messages["orphan"].pk, messages["complete"].pk],
    }, follow=True)
    assert "Stopped 1 stream(s)" in response.content.decode()
    orphan = Message.objects.get(pk=messages["orphan"].pk)
    assert (orphan.status, orphan.cancel_reason, orphan.content) == ("cancelled", "admin", "saved before the worker died")
    assert orphan.cancel_requested_at is not None
    assert Message.objects.get(pk=messages["complete"].pk).status == "complete"


def test_it_counts_a_projects_messages_by_status(admin_client, messages):
    page = admin_client.get(reverse("admin:chat_project_changelist")).content.decode()
    assert "Support bot" in page
    detail = admin_client.get(reverse("admin:chat_project_change", args=[messages["orphan"].project_id]))
    assert "llamas" in detail.content.decode()


def test_it_shows_staff_what_the_model_server_said_about_an_error(admin_client, user):
    project = Project.objects.create(owner=user, name="Keys")
    failed = Message.objects.create(project=project, role="assistant", status="error", error_type="upstream",
                                    error_detail="The model server rejected the request (401).",
                                    error_internal="401 from api.example.com: Incorrect API key provided: [redacted]")
    page = admin_client.get(reverse("admin:chat_message_change", args=[failed.pk])).content.decode()
    assert "Incorrect API key provided: [redacted]" in page
    assert "The model server rejected the request (401)." in page


def test_it_shows_and_sums_what_answers_cost_by_status(admin_client, user):
    project = Project.objects.create(owner=user, name="Costs")
    Message.objects.create(project=project, role="assistant", status="complete", prompt_tokens=100,
                           completion_tokens=40)
    Message.objects.create(project=project, role="assistant", status="cancelled", cancel_reason="user",
                           prompt_tokens=90, completion_tokens=12, tokens_estimated=True)
    Message.objects.create(project=project, role="assistant", status="cancelled", cancel_reason="disconnect",
                           prompt_tokens=10, completion_tokens=3, tokens_estimated=True)
    page = admin_client.get(reverse("admin:chat_message_changelist")).content.decode()
    assert "≈ 90 + 12" in page and "100 + 40" in page
    assert cost_row(page, "cancelled") == ["cancelled", "2", "100", "15", "2"]
    assert cost_row(page, "complete") == ["complete", "1", "100", "40", "0"]
    only_user_stops = admin_client.get(reverse("admin:chat_message_changelist"), {"cancel_reason__exact": "user"})
    assert cost_row(only_user_stops.content.decode(), "cancelled") == ["cancelled", "1", "90", "12", "1"]


def cost_row(page: str, status: str) -> list[str]:
    row = re.search(rf'<tr data-status="{status}">(.*?)</tr>', page, re.S).group(1)
    return re.findall(r"<td>(.*?)</td>", row)


def test_it_lists_rows_an_edit_replaced_apart(admin_client, user):
    project = Project.objects.create(owner=user, name="Edits")
    kept = Message.objects.create(project=project, role="user", content="the kept prompt")
    Message.objects.create(project=project, role="user", content="the replaced prompt", superseded_at=timezone.now())
    replaced = admin_client.get(reverse("admin:chat_message_changelist"), {"superseded": "yes"}).content.decode()
    assert "the replaced prompt" in replaced and "the kept prompt" not in replaced
    assert kept.superseded_at is None

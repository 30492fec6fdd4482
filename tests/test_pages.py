"""The HTML pages: projects, files and the chat page's server-rendered history."""

import json
import re

import pytest
from django.urls import reverse

from chat.models import Message, Project, ProjectFile

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user(username="alice", password="pw-alice-123")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user(username="bob", password="pw-bob-123")


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def project(alice):
    return Project.objects.create(owner=alice, name="Alice's project")


@pytest.fixture
def bob_project(bob):
    return Project.objects.create(owner=bob, name="Bob's secret project")


@pytest.fixture
def bob_file(bob_project):
    return ProjectFile.objects.create(project=bob_project, name="secret.txt", content="bob only")


def history_of(response):
    match = re.search(
        r'<script id="history" type="application/json">(.*?)</script>', response.content.decode(), re.S
    )
    assert match, "the chat page has no history json_script"
    return json.loads(match.group(1))


def test_it_renders_the_login_page(client):
    response = client.get(reverse("login"))

    assert response.status_code == 200
    assert b'name="username"' in response.content
    assert b'name="password"' in response.content


def test_it_signs_in_with_the_login_form(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": "pw-alice-123"})

    assert response.status_code == 302
    assert response.url == reverse("project-list")


def test_it_redirects_an_anonymous_visitor_of_the_project_list_to_login(client):
    response = client.get("/")

    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_it_redirects_an_anonymous_visitor_of_a_chat_page_to_login(client, project):
    response = client.get(reverse("project-chat", args=[project.pk]))

    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_it_lists_only_the_users_own_projects(alice_client, project, bob_project):
    response = alice_client.get("/")

    assert response.status_code == 200
    assert b"Alice&#x27;s project" in response.content
    assert b"Bob&#x27;s secret project" not in response.content


def test_it_shows_a_logout_form_that_posts(alice_client):
    response = alice_client.get("/")

    assert f'<form method="post" action="{reverse("logout")}">'.encode() in response.content


def test_it_creates_a_project_and_opens_its_chat(alice_client, alice):
    response = alice_client.post("/", {"name": "  New idea  "})

    project = Project.objects.get(owner=alice)
    assert project.name == "New idea"
    assert response.status_code == 302
    assert response.url == reverse("project-chat", args=[project.pk])


def test_it_shows_an_error_for_a_blank_project_name(alice_client, alice):
    response = alice_client.post("/", {"name": "   "})

    assert response.status_code == 200
    assert not Project.objects.filter(owner=alice).exists()
    assert b"field-error" in response.content


def test_it_renames_a_project(alice_client, project):
    response = alice_client.post(reverse("project-rename", args=[project.pk]), {"name": "Renamed"})

    project.refresh_from_db()
    assert project.name == "Renamed"
    assert response.url == reverse("project-chat", args=[project.pk])


def test_it_refuses_to_rename_with_get(alice_client, project):
    response = alice_client.get(reverse("project-rename", args=[project.pk]))

    assert response.status_code == 405


def test_it_keeps_the_name_when_a_rename_is_invalid(alice_client, project):
    response = alice_client.post(reverse("project-rename", args=[project.pk]), {"name": "x" * 201})

    project.refresh_from_db()
    assert project.name == "Alice's project"
    assert response.status_code == 200
    assert b"field-error" in response.content


def test_it_answers_404_for_someone_elses_project(alice_client, bob_project, bob_file):
    pages = [
        ("get", reverse("project-chat", args=[bob_project.pk])),
        ("get", reverse("project-files", args=[bob_project.pk])),
        ("get", reverse("project-file", args=[bob_project.pk, bob_file.pk])),
        ("post", reverse("project-rename", args=[bob_project.pk])),
        ("post", reverse("project-file-delete", args=[bob_project.pk, bob_file.pk])),
    ]
    for method, url in pages:
        assert getattr(alice_client, method)(url, {"name": "mine now"}).status_code == 404, url

    bob_project.refresh_from_db()
    assert bob_project.name == "Bob's secret project"
    assert ProjectFile.objects.filter(pk=bob_file.pk).exists()


def test_it_answers_404_for_a_file_of_another_project(alice_client, project, bob_file):
    url = reverse("project-file", args=[project.pk, bob_file.pk])

    assert alice_client.get(url).status_code == 404


def test_it_adds_views_and_deletes_a_file(alice_client, project):
    files_url = reverse("project-files", args=[project.pk])

    response = alice_client.post(files_url, {"name": "notes.md", "content": "# Notes\n<b>raw</b>"})
    assert response.status_code == 302
    project_file = ProjectFile.objects.get(project=project, name="notes.md")
    assert b"notes.md" in alice_client.get(files_url).content

    response = alice_client.get(reverse("project-file", args=[project.pk, project_file.pk]))
    assert response.status_code == 200
    assert b"# Notes\n&lt;b&gt;raw&lt;/b&gt;" in response.content

    response = alice_client.post(reverse("project-file-delete", args=[project.pk, project_file.pk]))
    assert response.url == files_url
    assert not ProjectFile.objects.filter(pk=project_file.pk).exists()


def test_it_shows_an_error_for_a_duplicate_file_name(alice_client, project):
    ProjectFile.objects.create(project=project, name="notes.md", content="first")

    response = alice_client.post(
        reverse("project-files", args=[project.pk]), {"name": "notes.md", "content": "second"}
    )

    assert response.status_code == 200
    assert b"already has a file named" in response.content
    assert ProjectFile.objects.get(project=project, name="notes.md").content == "first"


def test_it_offers_the_project_files_as_context_on_the_chat_page(alice_client, project):
    ProjectFile.objects.create(project=project, name="spec.txt", content="...")

    response = alice_client.get(reverse("project-chat", args=[project.pk]))

    html = response.content.decode()
    assert 'id="include-context"' in html
    assert 'name="context_files" value="spec.txt"' in html
    for element_id in ("prompt", "send-button", "messages", "connection-banner"):
        assert f'id="{element_id}"' in html


def test_it_passes_the_history_with_the_cancelled_marker_to_the_chat_page(alice_client, project):
    prompt = Message.objects.create(project=project, role="user", content="Tell me a story")
    answer = Message.objects.create(
        project=project, role="assistant", status="cancelled", cancel_reason="user", content="Once upon",
        reply_to=prompt, provider="openai", model="gpt-x", prompt_tokens=12, completion_tokens=3,
        tokens_estimated=True,
    )
    Message.objects.create(project=project, role="user", content="an edited-away prompt", superseded_at=answer.created_at)

    history = history_of(alice_client.get(reverse("project-chat", args=[project.pk])))

    assert [m["role"] for m in history] == ["user", "assistant"]  # not what an edit replaced
    assert history[1] == {
        "id": answer.pk,
        "role": "assistant",
        "status": "cancelled",
        "content": "Once upon",
        "display_content": "Once upon\n\n*[Response cancelled by user]*",
        "created_at": answer.created_at.isoformat(),
        "reply_to": prompt.pk,
        "continues": None,
        "selected": True,
        "provider": "openai",
        "model": "gpt-x",
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "estimated": True},
    }


def test_it_never_puts_message_html_into_the_page_outside_the_json_script(alice_client, project):
    Message.objects.create(project=project, role="user", content="<script>alert(1)</script>")

    response = alice_client.get(reverse("project-chat", args=[project.pk]))

    assert b"<script>alert(1)</script>" not in response.content
    assert b"\\u003Cscript\\u003Ealert(1)\\u003C/script\\u003E" in response.content
    assert history_of(response)[0]["content"] == "<script>alert(1)</script>"

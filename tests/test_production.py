"""Production defaults: what a server does when nobody set DEBUG, how it refuses settings that
cannot work, and that the documented production environment passes `check --deploy`."""

import json
import os
import secrets
import subprocess

import httpx
import pytest
import yaml

from tests.live import BIN, ROOT, LiveServer, manage, project_of, sign_in
from harness.processes import free_port

PRODUCTION_ENV = ROOT / "docs" / "production.env"
GOOD_KEY = secrets.token_urlsafe(50)


def clean_env(**env) -> dict:
    """This process's environment without any setting of ours, plus `env`."""
    ours = ("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "LLM_", "STREAM_", "SECURE_", "DATABASE_URL", "REDIS_URL",
            "CSRF_", "LOG_", "LOGIN_", "SOCKETS_", "DJANGO_SETTINGS_MODULE")
    kept = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    return {**kept, "DJANGO_SETTINGS_MODULE": "chatproj.settings", **env}


def documented_production_env() -> dict:
    env = {}
    for line in PRODUCTION_ENV.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    return env


@pytest.mark.slow
def test_debug_is_off_unless_set(tmp_path):
    env = clean_env(SECRET_KEY=GOOD_KEY, ALLOWED_HOSTS="localhost", DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3")
    shown = manage(env, "shell", "-c", "from django.conf import settings; print(settings.DEBUG)")
    assert shown.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.slow
def test_without_debug_a_missing_secret_key_refuses_to_start_with_a_clear_message(tmp_path):
    env = clean_env(ALLOWED_HOSTS="localhost", DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3")
    checked = manage(env, "check", check=False)
    assert checked.returncode != 0 and "SECRET_KEY is not set, and DEBUG is off" in checked.stderr
    daphne = subprocess.run([str(BIN / "daphne"), "-p", str(free_port()), "chatproj.asgi:application"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert daphne.returncode != 0
    assert "The server cannot start" in daphne.stderr and "SECRET_KEY is not set" in daphne.stderr


@pytest.mark.slow
@pytest.mark.parametrize("env, words", [
    ({"LLM_PROVIDER": "openia"}, ["LLM_PROVIDER='openia'", "demo, openai, anthropic"]),
    ({"STREAM_MAX_AGE": "five minutes"}, ["STREAM_MAX_AGE must be a number"]),
    ({"STREAM_MAX_PER_USER": "0"}, ["STREAM_MAX_PER_USER=0 is out of range"]),
    ({"STREAM_FLUSH_INTERVAL": "-1"}, ["STREAM_FLUSH_INTERVAL=-1"]),
    ({"STREAM_LIMIT_POLICY": "kill_all"}, ["STREAM_LIMIT_POLICY='kill_all'"]),
    ({"LLM_BASE_URL": "api.openai.com/v1"}, ["is not an http(s) URL"]),
    ({"LLM_BASE_URL": "https://api.openai.com/v1/chat/completions"}, ["names an endpoint"]),
    ({"LOG_FORMAT": "xml"}, ["LOG_FORMAT must be text or json, not 'xml'"]),
    ({"LOG_LEVEL": "LOUD"}, ["LOG_LEVEL must be"]),
])
def test_a_setting_that_cannot_work_fails_the_check_naming_it(tmp_path, env, words):
    checked = manage(clean_env(DEBUG="1", DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3", **env), "check", check=False)
    assert checked.returncode != 0
    for word in words:
        assert word in checked.stderr


@pytest.mark.slow
def test_the_documented_production_environment_passes_check_deploy(tmp_path):
    env = clean_env(**{**documented_production_env(), "SECRET_KEY": GOOD_KEY,
                       "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3", "REDIS_URL": ""})
    checked = manage(env, "check", "--deploy", "--fail-level", "WARNING", check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "no issues" in checked.stdout


def test_compose_requires_a_secret_key_and_defaults_to_no_debug():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        if "SECRET_KEY" in environment:
            assert environment["SECRET_KEY"].startswith("${SECRET_KEY:?"), name
            assert environment.get("DEBUG") == "0", name


@pytest.fixture(scope="module")
def production_server(tmp_path_factory):
    """A daphne without DEBUG and without `collectstatic`, as someone would first start it."""
    workdir = tmp_path_factory.mktemp("production")
    server = LiveServer(workdir, {"DEBUG": "0", "SECRET_KEY": GOOD_KEY, "ALLOWED_HOSTS": "127.0.0.1,localhost",
                                  "STATIC_ROOT": str(workdir / "not-collected"), "LLM_DEMO_DELAY": "0"})
    server.start()
    server.manage("ensure_demo_user", "--username", "target", "--password", "target-password")
    yield server
    server.stop()


@pytest.mark.slow
def test_without_debug_and_collectstatic_pages_and_static_files_are_served(production_server):
    with httpx.Client(base_url=production_server.url) as client:
        login = client.get("/accounts/login/")
        assert login.status_code == 200 and "Sign in" in login.text
        for path in ("/static/css/app.css", "/static/js/chat.js", "/static/vendor/marked/marked.esm.js",
                     "/static/admin/css/base.css"):
            assert client.get(path).status_code == 200, path
        assert client.get("/admin/login/").status_code == 200


@pytest.mark.slow
def test_a_crash_shows_no_technical_page_without_debug(production_server):
    with httpx.Client(base_url=production_server.url) as client:
        missing = client.get("/projects/999/")  # a redirect to sign in, not a debug page
        assert missing.status_code == 302
        not_found = client.get("/no/such/page/")
        assert not_found.status_code == 404 and "Traceback" not in not_found.text and "URLconf" not in not_found.text


@pytest.mark.slow
def test_every_page_carries_a_content_security_policy_without_inline_scripts(production_server):
    with httpx.Client(base_url=production_server.url) as client:
        policy = client.get("/accounts/login/").headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
    assert directives["script-src"] == "'self'" and directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"


@pytest.mark.slow
def test_password_guessing_is_throttled(production_server):
    with httpx.Client(base_url=production_server.url) as client:
        def attempt(password):
            page = client.get("/accounts/login/")
            token = page.text.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
            return client.post("/accounts/login/", data={
                "username": "target", "password": password, "csrfmiddlewaretoken": token,
            }, headers={"Referer": f"{production_server.url}/accounts/login/"})

        statuses = [attempt(f"guess-{i}").status_code for i in range(30)]
        right = attempt("target-password")
    assert statuses[:4] == [200] * 4 and set(statuses[4:]) == {429}
    assert right.status_code == 429 and "Too many failed sign-ins" in right.text
    assert "sessionid" not in client.cookies


@pytest.mark.slow
def test_without_debug_every_log_line_of_a_finished_stream_is_one_json_object(production_server):
    client = sign_in(production_server)
    project_id = project_of(client)
    with client.stream("POST", f"/api/projects/{project_id}/chat/", json={"content": "log me"}) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    client.close()
    assert response.status_code == 200 and events[-1]["type"] == "stream_complete"
    answer_id = events[0]["assistant_message"]["id"]
    records = [json.loads(line) for line in production_server.output(chars=10**6).splitlines()
               if line.startswith("{")]
    finished = [r for r in records if r.get("logger") == "streaming.finished" and r["message_id"] == answer_id]
    assert len(finished) == 1
    assert finished[0]["status"] == "complete" and finished[0]["chunks"] > 10 and finished[0]["level"] == "INFO"
    assert {"time", "message", "duration_ms", "ttfc_ms", "worker"} <= set(finished[0])

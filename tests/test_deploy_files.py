"""The deployment files read as an operator needs them: one image for every app service,
healthchecks, no default secret, every setting passed through, a non-root image without
tests; and the services' own commands and environment work, run directly (no container
engine here: tests/multi/test_compose.py runs them on PostgreSQL and Redis)."""

import re

import yaml

from tests.live import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = {name: s for name, s in SERVICES.items() if s.get("image") == "stopchat:local"}
SECRETS = ("SECRET_KEY", "POSTGRES_PASSWORD", "FIRST_USER_PASSWORD", "FIRST_USER_NAME", "ALLOWED_HOSTS")


def settings_named(*prefixes: str) -> set[str]:
    source = (ROOT / "chatproj" / "settings.py").read_text()
    return {name for name in re.findall(r'env_(?:float|int|bool|list)\("([A-Z_]+)"|environ.get\("([A-Z_]+)"', source)
            for name in name if name and name.startswith(prefixes)}


def test_every_app_service_runs_the_one_image_that_init_builds():
    assert set(APP_SERVICES) == {"init", "web1", "web2", "sweeper"}
    assert [name for name, s in SERVICES.items() if "build" in s] == ["init"]
    assert all(s.get("pull_policy") == "never" for s in APP_SERVICES.values())
    for name in ("web1", "web2", "sweeper"):
        assert APP_SERVICES[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"


def test_the_workers_have_healthchecks_on_healthz_and_time_to_finalize():
    for name in ("web1", "web2"):
        check = SERVICES[name]["healthcheck"]
        assert "http://localhost:8000/healthz" in " ".join(check["test"])
        assert SERVICES[name]["stop_grace_period"] == "20s"
    assert all("healthcheck" in SERVICES[name] for name in ("postgres", "redis"))


def test_nothing_has_a_default_secret():
    text = (ROOT / "docker-compose.yml").read_text()
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"(:[?-][^}]*)?\}", text)
        assert uses and all(use.startswith(":?") for use in uses), (name, uses)
    assert not re.search(r"PASSWORD: [^$\s]", text)


def test_every_llm_and_stream_setting_is_passed_through():
    wanted = settings_named("LLM_", "STREAM_")
    assert {"LLM_PROVIDER", "LLM_READ_TIMEOUT", "STREAM_SENDS_PER_MINUTE"} <= wanted
    for name, service in APP_SERVICES.items():
        assert wanted <= set(service["environment"]), (name, wanted - set(service["environment"]))


def test_init_migrates_and_creates_the_first_user_once():
    command = " ".join(SERVICES["init"]["command"])
    assert "migrate --no-input" in command and "ensure_user" in command
    assert SERVICES["init"]["restart"] == "no"
    assert {"FIRST_USER_NAME", "FIRST_USER_PASSWORD"} <= set(SERVICES["init"]["environment"])


def test_the_image_runs_as_a_user_with_locked_packages_and_no_tests():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER stopchat$", dockerfile, re.M)
    assert "pip install --require-hashes -r requirements/runtime.txt" in dockerfile
    copied = re.findall(r"^COPY (\S+)", dockerfile, re.M)
    assert not {"tests", "bench", "harness", "."} & set(copied)
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    kept = {line[1:].split("/")[0] for line in ignored if line.startswith("!")}
    assert "*" in ignored and "**/*.sqlite3*" in ignored  # everything but what is named
    assert kept == {"manage.py", "requirements", "chatproj", "chat", "streaming", "templates", "static"}


def test_the_runtime_lock_holds_no_test_or_bench_package():
    runtime = (ROOT / "requirements" / "runtime.txt").read_text()
    pinned = set(re.findall(r"^([a-z0-9_.-]+)==", runtime, re.M))
    assert {"django", "channels", "daphne", "uvicorn", "uvloop", "httpx", "httpcore", "redis"} <= pinned
    assert not {"pytest", "playwright", "hypothesis", "matplotlib", "py-spy", "psutil", "pyyaml"} & pinned
    assert "--hash=sha256:" in runtime


def test_git_ignores_the_sqlite_side_files():
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert {"*.sqlite3", "*.sqlite3-wal", "*.sqlite3-shm"} <= set(ignored)

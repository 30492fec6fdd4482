"""docker-compose.yml's services run as it says, on this machine's PostgreSQL and Redis (no
container engine runs here): `init` with its command and environment, then a worker with
its command, answering its healthcheck, and the environment refusing to start without
the secrets compose requires."""

import re
import subprocess

import pytest

from harness.processes import free_port, start_server, stop_server
from tests.live import ROOT, BIN
from tests.multi.conftest import REDIS_ADMIN
from tests.test_deploy_files import SERVICES

GIVEN = {"SECRET_KEY": "compose-" + "s" * 50, "ALLOWED_HOSTS": "chat.example.com", "POSTGRES_PASSWORD": "unused",
         "FIRST_USER_NAME": "admin", "FIRST_USER_PASSWORD": "first-password"}


def interpolate(environment: dict, given: dict) -> dict:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, from `given`."""
    def value(found):
        name, how, rest = found.group(1), found.group(2) or "", found.group(3) or ""
        if name in given:
            return given[name]
        if how == ":?":
            raise KeyError(f"{name}: {rest}")
        return rest

    return {k: re.sub(r"\$\{([A-Z_]+)(:[-?])?([^}]*)\}", value, str(v)) for k, v in environment.items()}


def test_compose_refuses_to_start_without_its_secrets():
    for missing in GIVEN:
        with pytest.raises(KeyError, match=missing):
            interpolate(SERVICES["init"]["environment"], {k: v for k, v in GIVEN.items() if k != missing})


def test_init_then_a_worker_run_with_composes_commands_and_environment(pg_database, layer_prefix, tmp_path):
    base = {**interpolate(SERVICES["init"]["environment"], GIVEN), "PATH": str(BIN) + ":/usr/bin:/bin"}
    # The services' host names are compose's; here they are this machine's.
    base.update(DATABASE_URL=pg_database, REDIS_URL=REDIS_ADMIN, CHANNEL_LAYER_PREFIX=layer_prefix,
                STATIC_ROOT=str(tmp_path / "static"))
    init = subprocess.run(SERVICES["init"]["command"], cwd=ROOT, env=base, capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    assert "User 'admin' created." in init.stdout
    again = subprocess.run(SERVICES["init"]["command"], cwd=ROOT, env=base, capture_output=True, text=True, timeout=120)
    assert "User 'admin' already exists." in again.stdout

    command = SERVICES["web1"]["command"]
    assert command[:3] == ["python", "-m", "chatproj.serve"]  # uvicorn
    port = free_port()
    command = [{"0.0.0.0": "127.0.0.1", "8000": str(port)}.get(part, part) for part in command]
    worker_env = interpolate(SERVICES["web1"]["environment"], GIVEN) | {
        k: base[k] for k in ("PATH", "DATABASE_URL", "REDIS_URL", "CHANNEL_LAYER_PREFIX", "STATIC_ROOT")}
    with open(tmp_path / "web1.log", "w") as log:
        process = start_server("chatproj.asgi:application", port, worker_env, ROOT, log, timeout=30,
                               command=command)
    try:
        probe = [part.replace("localhost:8000", f"localhost:{port}") for part in SERVICES["web1"]["healthcheck"]["test"][1:]]
        assert subprocess.run(probe, env=worker_env, timeout=10).returncode == 0
    finally:
        stop_server(process, 15)
    assert process.returncode == 0

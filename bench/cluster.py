"""The processes of a benchmark run: the fake upstream, the database, the daphne servers."""

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

from harness.processes import BIN, free_port, start_server, stop_server

ROOT = Path(__file__).resolve().parent.parent
# Where the servers' code is taken from: the work tree, or a snapshot of a commit
# (`--server-tree REF`), so that edits made while a run goes on do not mix in.
SERVER_ROOT = ROOT


def snapshot(ref: str, folder: Path) -> Path:
    """The tree of `ref` unpacked into `folder`, to run the servers from."""
    global SERVER_ROOT
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    SERVER_ROOT = folder
    return folder
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_ADMIN = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

# Every write to a chat_message row, counted by the database itself (a row trigger),
# so the count is of real writes, per message, whatever process made them.
SQLITE_TRIGGERS = """
CREATE TABLE IF NOT EXISTS bench_write (message_id INTEGER, op TEXT);
CREATE TRIGGER IF NOT EXISTS bench_write_insert AFTER INSERT ON chat_message
BEGIN INSERT INTO bench_write VALUES (NEW.id, 'insert'); END;
CREATE TRIGGER IF NOT EXISTS bench_write_update AFTER UPDATE ON chat_message
BEGIN INSERT INTO bench_write VALUES (NEW.id, 'update'); END;
"""
PG_TRIGGERS = """
CREATE TABLE IF NOT EXISTS bench_write (message_id bigint, op text);
CREATE OR REPLACE FUNCTION bench_write_log() RETURNS trigger AS $$
BEGIN INSERT INTO bench_write VALUES (NEW.id, lower(TG_OP)); RETURN NULL; END $$ LANGUAGE plpgsql;
CREATE TRIGGER bench_write_row AFTER INSERT OR UPDATE ON chat_message
FOR EACH ROW EXECUTE FUNCTION bench_write_log();
"""


def die_with_parent() -> None:
    """Children of a benchmark run end with it, even when it is killed (Linux prctl)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Upstream:
    """`python -m bench.upstream` in its own process."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-m", "bench.upstream"], cwd=ROOT, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
        self.port = int(self.process.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def stats(self, closed: bool = False) -> dict:
        return self.http.get("/stats" + ("?closed=1" if closed else "")).json()

    def reset(self) -> None:
        self.http.get("/reset")

    def stop(self) -> None:
        self.http.close()
        self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Database:
    """SQLite in a work folder, or a PostgreSQL database of the run's own (dropped at the end)."""

    def __init__(self, backend: str, workdir: Path):
        self.backend = backend
        if backend == "pg":
            self.name = f"stopchat_bench_{secrets.token_hex(4)}"
            self._admin(f'CREATE DATABASE "{self.name}"')
            self.url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{self.name}"
        else:
            self.path = workdir / "bench.sqlite3"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self.url = f"sqlite:///{self.path}"

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(statement)

    def prepare(self, env: dict, users: int, projects: int) -> dict:
        subprocess.run([str(BIN / "python"), "manage.py", "migrate", "--no-input"], cwd=SERVER_ROOT, env=env, check=True,
                       capture_output=True)
        self.script(SQLITE_TRIGGERS if self.backend == "sqlite" else PG_TRIGGERS)
        out = subprocess.run([str(BIN / "python"), "-m", "bench.setup_db", str(users), str(projects)], cwd=SERVER_ROOT, env=env,
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out)

    def script(self, sql: str) -> None:
        if self.backend == "sqlite":
            with sqlite3.connect(self.path, timeout=30) as conn:
                conn.executescript(sql)
        else:
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(sql)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        if self.backend == "sqlite":
            with sqlite3.connect(self.path, timeout=30) as conn:
                return conn.execute(sql.replace("%s", "?"), params).fetchall()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def writes(self, message_ids: list[int]) -> dict[int, dict[str, int]]:
        """Row writes per message: {id: {"insert": n, "update": n}}."""
        counts: dict[int, dict[str, int]] = {m: {"insert": 0, "update": 0} for m in message_ids}
        for start in range(0, len(message_ids), 500):
            part = message_ids[start:start + 500]
            marks = ",".join(["%s"] * len(part))
            for message_id, op, n in self.query(
                    f"SELECT message_id, op, count(*) FROM bench_write WHERE message_id IN ({marks}) GROUP BY 1, 2", tuple(part)):
                counts[message_id][op] = n
        return counts

    def drop(self) -> None:
        if self.backend == "pg":
            self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class Server:
    """One server process (daphne, or uvicorn through chatproj/serve.py) serving `app` with `env`."""

    def __init__(self, env: dict, app: str, log_path: Path, kind: str = "daphne"):
        self.kind = kind
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = open(log_path, "a")
        self.process = start_server(app, self.port, env, SERVER_ROOT, self.log, timeout=30, kind=kind,
                                    preexec_fn=die_with_parent)
        self.ps = psutil.Process(self.process.pid)

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def get(self, path: str, session: str) -> dict:
        return httpx.get(f"http://{self.address}{path}", cookies={"sessionid": session}, timeout=15).json()

    def stop(self) -> None:
        stop_server(self.process, 20)
        self.log.close()


SECRET_KEY = "bench-" + secrets.token_hex(16)  # one per run: sessions are made before the servers start


def server_env(db: Database, upstream: Upstream, prefix: str | None, **extra) -> dict:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("STREAM_", "LLM_", "REDIS_", "DATABASE_"))}
    env = {
        **inherited,
        "PYTHONPATH": str(SERVER_ROOT),  # ahead of the editable install's path
        "DJANGO_SETTINGS_MODULE": "bench.settings", "DEBUG": "0", "SECRET_KEY": SECRET_KEY,
        "ALLOWED_HOSTS": "127.0.0.1,localhost", "DATABASE_URL": db.url,
        "LLM_PROVIDER": "openai", "LLM_BASE_URL": upstream.base_url, "LLM_API_KEY": "bench", "LLM_MODEL": "bench-model",
        "STREAM_MAX_PER_PROCESS": "5000", "STREAM_MAX_PER_USER": "1000",
        # The load is many prompts per user and socket: the abuse limits would refuse it.
        "STREAM_SENDS_PER_MINUTE": "0", "SOCKETS_MAX_PER_USER": "1000",
    }
    if prefix:
        env.update(REDIS_URL=REDIS_ADMIN, CHANNEL_LAYER_PREFIX=prefix)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def clear_redis_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_ADMIN)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)

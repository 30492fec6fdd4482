"""Two real daphne workers on this machine's PostgreSQL and Redis.

Each test run gets its own database and its own channel-layer prefix, both
removed afterwards. Without PostgreSQL or Redis the tests here are skipped,
and the skip reason says which service did not answer.
"""

import os
import secrets
import shutil
import subprocess
import time
from contextlib import contextmanager

import psycopg
import pytest
import redis

from tests.live import LiveServer, free_port, manage, sign_in
from tests.upstream import running_upstream

PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_ADMIN = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _service_problem() -> str | None:
    try:
        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
    except Exception as error:
        return f"PostgreSQL at {PG_ADMIN} did not answer ({type(error).__name__})"
    try:
        redis.Redis.from_url(REDIS_ADMIN, socket_timeout=3).ping()
    except Exception as error:
        return f"Redis at {REDIS_ADMIN} did not answer ({type(error).__name__})"
    return None


PROBLEM = _service_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/multi/" in str(item.fspath) and PROBLEM:
            item.add_marker(pytest.mark.skip(reason=f"needs PostgreSQL and Redis: {PROBLEM}"))


@pytest.fixture(scope="session")
def pg_database():
    name = f"stopchat_test_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def layer_prefix():
    prefix = f"stopchat-test-{secrets.token_hex(4)}"
    yield prefix
    client = redis.Redis.from_url(REDIS_ADMIN)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


@pytest.fixture(scope="session")
def cluster_upstream():
    with running_upstream() as upstream:
        yield upstream


class Cluster:
    """Workers sharing one database and one channel layer."""

    def __init__(self, workdir, env):
        self.workdir = workdir
        self.env = env
        self.workers: list[LiveServer] = []

    def add_worker(self, **env) -> LiveServer:
        worker = LiveServer(self.workdir, {**self.env, **env})
        worker.start(prepare=not self.workers)
        self.workers.append(worker)
        return worker

    def manage(self, *args, check=True, **env) -> subprocess.CompletedProcess:
        return manage({**self.workers[0].env, **env}, *args, check=check)

    def sql(self, query: str, *params):
        with psycopg.connect(self.env["DATABASE_URL"], autocommit=True) as conn:
            rows = conn.execute(query, params)
            return rows.fetchall() if rows.description else None

    def stop(self):
        for worker in self.workers:
            worker.stop()


def cluster_env(pg_database, layer_prefix, upstream, redis_url=REDIS_ADMIN) -> dict:
    return {
        "DATABASE_URL": pg_database, "REDIS_URL": redis_url, "CHANNEL_LAYER_PREFIX": layer_prefix,
        "LLM_PROVIDER": "openai", "LLM_BASE_URL": upstream.base_url, "LLM_API_KEY": "k",
        "STREAM_FLUSH_INTERVAL": "0.2", "STREAM_FRAME_INTERVAL": "0.02", "STREAM_DISCONNECT_GRACE": "5",
        "STREAM_MAX_PER_USER": "2",
    }


@contextmanager
def running_cluster(workdir, env, workers=2):
    cluster = Cluster(workdir, env)
    try:
        for _ in range(workers):
            cluster.add_worker()
        yield cluster
    finally:
        cluster.stop()


@contextmanager
def two_workers_on(redis, workdir, pg_database, layer_prefix, upstream):
    """Two workers on `redis` (a redis-server of the test's own), a signed-in client for
    each, and the demo user's project."""
    with running_cluster(workdir, cluster_env(pg_database, layer_prefix, upstream, redis_url=redis.url)) as cluster:
        clients = [sign_in(worker) for worker in cluster.workers]
        try:
            yield cluster, clients, clients[0].get("/api/projects/").json()["results"][0]["id"]
        finally:
            for client in clients:
                client.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, pg_database, layer_prefix, cluster_upstream):
    with running_cluster(tmp_path_factory.mktemp("cluster"), cluster_env(pg_database, layer_prefix, cluster_upstream)) as running:
        yield running


@pytest.fixture(scope="module")
def clients(cluster):
    """A signed-in HTTP client per worker (one session, valid on both)."""
    first = sign_in(cluster.workers[0])
    second = sign_in(cluster.workers[1])
    yield first, second
    first.close()
    second.close()


@pytest.fixture(scope="module")
def project_id(clients):
    return clients[0].get("/api/projects/").json()["results"][0]["id"]


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own on a free port, to stop and restart at will."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()

    class OwnRedis:
        url = f"redis://127.0.0.1:{port}/0"
        process = None

        def start(self):
            self.process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                             "--appendonly", "no", "--dir", str(tmp_path)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    redis.Redis.from_url(self.url, socket_timeout=1).ping()
                    return
                except redis.RedisError:
                    time.sleep(0.05)
            raise RuntimeError("redis-server did not start")

        def stop(self):
            if self.process and self.process.poll() is None:
                self.process.kill()
                self.process.wait(5)

    server = OwnRedis()
    server.start()
    yield server
    server.stop()

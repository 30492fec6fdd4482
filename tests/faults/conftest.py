"""Fixtures of the fault suite: real daphne processes started from one prepared database,
and (for the service faults) this machine's PostgreSQL and Redis as tests/multi uses them."""

import pytest

from tests.faults.support import GatedUpstream, prepare_database, start_live_server
from tests.live import upstream_fixture
from tests.multi.conftest import PROBLEM, layer_prefix, own_redis, pg_database  # noqa: F401 (fixtures)

needs_postgres_and_redis = pytest.mark.skipif(PROBLEM is not None, reason=f"needs PostgreSQL and Redis: {PROBLEM}")


@pytest.fixture(scope="session")
def template_database(tmp_path_factory):
    return prepare_database(tmp_path_factory.mktemp("template"))


@pytest.fixture(scope="module")
def live_servers(tmp_path_factory, template_database):
    """Starts daphne processes (each on a copy of the prepared database); stops them at the
    end of the module."""
    started = []

    def start(kind="daphne", **env):
        server = start_live_server(tmp_path_factory.mktemp("live"), template_database, env, kind)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


module_upstream = upstream_fixture("module")


@pytest.fixture(scope="module")
def gated_upstream():
    upstream = GatedUpstream().start()
    yield upstream
    upstream.stop()

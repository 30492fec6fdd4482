"""The server's own settings plus one read-only probe URL for the benchmark (see bench/urls.py).

Nothing on the socket, stream or database path changes: only ROOT_URLCONF.
"""

from chatproj.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"

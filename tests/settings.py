"""The settings the test run uses: the server's own, in development mode (DEBUG=1, set
explicitly here as `make run` does; live servers get it from their environment)."""

import os

os.environ.setdefault("DEBUG", "1")

from chatproj.settings import *  # noqa: E402, F403

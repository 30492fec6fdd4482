"""The identity of this server process, stored on the messages it produces."""

import os
import socket
import time


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{int(time.time())}"


WORKER_ID = _worker_id()

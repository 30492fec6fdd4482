"""Starting and stopping servers (daphne or uvicorn), for the live tests (tests/live.py) and the benchmark (bench/cluster.py).

Plain Python, without pytest.
"""

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
LOG_TAIL = 4000  # characters of a daphne log quoted in an error


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: str | Path, chars: int = LOG_TAIL) -> str:
    return Path(path).read_text(errors="replace")[-chars:]


SERVERS = ("daphne", "uvicorn")


def server_command(kind: str, app: str, port: int) -> list[str]:
    """How a server of `kind` serves `app` on 127.0.0.1:`port` (uvicorn through chatproj/serve.py)."""
    if kind == "uvicorn":
        assert app == "chatproj.asgi:application", "chatproj.serve runs the server's own application"
        return [str(BIN / "python"), "-m", "chatproj.serve", "--host", "127.0.0.1", "--port", str(port)]
    return [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), app]


def start_server(app: str, port: int, env: dict, cwd: Path, log, timeout: float, kind: str = "daphne",
                 command: list[str] | None = None, **popen) -> subprocess.Popen:
    """`app` served by daphne or uvicorn on 127.0.0.1:`port` with `env` as its whole
    environment, once /healthz answers 200 (`command`: the server's own command line, say
    a compose file's, serving on that port).

    Its output goes to `log` (a file open for writing); `popen` adds to the Popen arguments.
    A server that exits or does not answer within `timeout` seconds is stopped, and the
    error quotes the end of its log: that is where a settings error or a taken port shows.
    """
    process = subprocess.Popen(command or server_command(kind, app, port), cwd=cwd, env=env, stdout=log,
                               stderr=subprocess.STDOUT, **popen)
    problem = _wait_until_serving(process, f"http://127.0.0.1:{port}/healthz", timeout)
    if problem:
        stop_server(process, 5)
        raise RuntimeError(f"{kind} ({app}) {problem}; the end of {log.name}:\n{log_tail(log.name)}")
    return process


def _wait_until_serving(process: subprocess.Popen, url: str, timeout: float) -> str | None:
    """None once `url` answers 200, else what went wrong."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return None
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            return f"exited with code {process.returncode} before serving"
        if time.monotonic() > deadline:
            return f"did not answer {url} within {timeout:g}s"
        time.sleep(0.1)


def stop_server(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM, then SIGKILL if the server is not gone within `grace` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

"""`python -m chatproj.serve [--host H] [--port P]`: the application under uvicorn, with
uvloop, httptools and websockets, its lifespan on (chat/process.py: liveness at start,
answers finalized first on SIGTERM), and logging left to the server's own settings, so
uvicorn's records (its access log too) come out as the rest do (JSON lines in production)."""

import argparse
import signal
import sys

import uvicorn


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m chatproj.serve", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--ws", default="websockets-sansio", help="uvicorn's websocket implementation")
    args = parser.parse_args()
    # Once shut down gracefully, uvicorn raises again the signal it stopped on, under the
    # handler found at start: this one, so that a finished shutdown exits 0.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda *_: sys.exit(0))
    uvicorn.run("chatproj.asgi:application", host=args.host, port=args.port, loop="uvloop", http="httptools",
                ws=args.ws, lifespan="on", log_config=None, ws_max_size=1024 * 1024,
                # After our SIGTERM handler has finalized every answer, sockets close within this.
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()

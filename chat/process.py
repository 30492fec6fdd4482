"""This server process's start and stop (DESIGN.md principles 10 and 11).

At start: the heartbeat and the sweep of dead workers' answers (chat/liveness.py).
On SIGTERM (or SIGINT): every answer this process produces is finalized as
`cancelled`/`shutdown`, its text saved and its watchers told, before the sockets close;
then every background loop ends (liveness, the bus, the layer's receives), so nothing
keeps the process alive past its shutdown.

Daphne cancels every application at shutdown, and a cancelled consumer can no longer
tell its socket anything; so the streams are stopped first, from our own signal
handler, and only then is the reactor asked to stop.
"""

import asyncio
import atexit
import gc
import logging
import signal
import sys

from channels.layers import get_channel_layer

from streaming import metrics
from streaming.registry import registry

from . import answers, writer
from .bus import bus
from .liveness import liveness

log = logging.getLogger("chat.process")

STREAMS_TIMEOUT = 10.0  # within daphne's application close timeout


def install_daphne_hooks() -> None:
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:  # not under daphne (uvicorn uses `lifespan` below; tests, commands)
        return
    # After startup, so these handlers replace the ones Twisted installs while starting.
    reactor.callWhenRunning(lambda: _take_over_signals(lambda: reactor.callFromThread(reactor.stop),
                                                        reactor.callFromThread))
    # Callbacks of callWhenRunning run before the loop does; callLater's, inside it.
    reactor.callLater(0, _started)


async def lifespan(scope, receive, send) -> None:
    """The ASGI lifespan protocol (uvicorn): the same start and stop as under daphne.

    Uvicorn closes every socket on SIGTERM before it tells the application; so its
    signal handler is wrapped: the answers are finalized first, their sockets told,
    and only then is uvicorn's own handler called.
    """
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _started()
            loop = asyncio.get_running_loop()
            handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
            _take_over_signals(lambda signum=signal.SIGTERM: handlers[signum](signum, None), loop.call_soon_threadsafe)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await stop_this_process()  # done already, unless the server stopped on its own
            await send({"type": "lifespan.shutdown.complete"})
            return


def _take_over_signals(stop_server, call_in_loop) -> None:
    """SIGTERM and SIGINT: finalize this process's answers, then `stop_server()`; a second
    signal stops the server at once."""
    state = {"stopping": False}

    def begin(signum, frame):
        if state["stopping"]:
            stop_server()
            return
        state["stopping"] = True
        call_in_loop(lambda: asyncio.ensure_future(_stop_then(stop_server)))

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, begin)


def _started() -> None:
    atexit.register(_finish_abandoned_tasks, asyncio.get_running_loop())
    liveness.start()
    metrics.lag_monitor.start()
    # What is loaded by now lives as long as the process: out of the collector's full passes,
    # which at 200 streams stalled the loop for 70 ms (about 25 ms without it).
    gc.freeze()


async def _stop_then(stop_server) -> None:
    try:
        await stop_this_process()
    finally:
        stop_server()


_stopping = []  # one item once the process stops


async def stop_this_process() -> None:
    """Finalize this process's answers, then end its background loops (once)."""
    if _stopping:
        return
    _stopping.append(True)
    try:
        log.info("shutting down: stopping %d stream(s)", registry.active_count())
        await answers.stop_every_answer_here(reason="shutdown", timeout=STREAMS_TIMEOUT)
        metrics.lag_monitor.stop()
        await liveness.stop()
        await bus.drain(timeout=2.0)
        await asyncio.sleep(0.2)  # the sockets' senders send the terminal events
        await bus.stop()
        await writer.close()
    except Exception:
        log.exception("shutdown of the streams failed")
    finally:
        # The server waits for every consumer it cancels; none may wait for Redis any longer.
        get_channel_layer().stopping = True


def _finish_abandoned_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """At exit, as asyncio.run does: cancel the tasks still pending and let them end.

    Daphne stops its reactor with some applications still pending (a socket that closed
    while it was stopping is handed its disconnect, but the loop never runs them again).
    Left to the interpreter's final collection, their coroutines are closed after the
    modules they need are gone, which crashes CPython 3.11 (a SIGSEGV at exit).
    """
    if loop.is_closed() or loop.is_running():
        return
    pending = asyncio.all_tasks(loop)
    if not pending:
        return
    for task in pending:
        task.cancel()
    try:
        loop.run_until_complete(asyncio.wait(pending, timeout=2.0))
    except Exception:
        log.exception("tasks left at exit could not be ended")

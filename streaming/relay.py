"""The text of one running stream and its fan-out to watchers.

Deltas are joined into at most one chunk frame per frame interval (DESIGN.md
principle 8). Every delta sent is kept, in order, so a watcher that attaches late
(a resume) gets exactly the frames it missed, then live ones. What a frame looks
like on the wire is the chat layer's business (its Encoder); each frame is
serialized once, however many watchers it goes to.
"""

import asyncio
from typing import Protocol

# Daphne limits a websocket message to 1 MiB, in both directions; a frame's delta stays
# well under it even escaped six bytes a character.
MAX_DELTA_CHARS = 128 * 1024


class Encoder(Protocol):
    def chunk(self, message_id: int, seq: int, delta: str) -> str:
        """The wire text of one chunk frame."""

    def final(self, event: dict) -> str:
        """The wire text of a terminal event."""


class Frame:
    """One thing a watcher is handed: a chunk (`seq`, `delta`), the terminal `event`, or an
    event already serialized elsewhere (`text`; `final` when it is the terminal one)."""

    __slots__ = ("message_id", "seq", "delta", "event", "final", "timeline", "_encoder", "_text")

    def __init__(self, message_id: int, *, seq: int = 0, delta: str = "", event: dict | None = None,
                 encoder: Encoder | None = None, text: str | None = None, final: bool = False,
                 timeline: dict | None = None):
        self.message_id, self.seq, self.delta, self.event = message_id, seq, delta, event
        self.final = final or event is not None
        self.timeline = timeline  # a stopped stream's stop timeline, on its terminal frame
        self._encoder, self._text = encoder, text

    @property
    def text(self) -> str:
        if self._text is None:
            if self.event is not None:
                self._text = self._encoder.final(self.event)
            else:
                self._text = self._encoder.chunk(self.message_id, self.seq, self.delta)
        return self._text


class Watcher(Protocol):
    def deliver(self, frame: Frame) -> None:
        """Queue one frame; must not block."""


class Relay:
    def __init__(self, message_id: int, frame_interval: float, encoder: Encoder):
        self.message_id = message_id
        self.frame_interval = frame_interval
        self.encoder = encoder
        self.watchers: set[Watcher] = set()
        self.sent_deltas: list[str] = []  # the delta of each chunk frame sent; seq = index + 1
        self.pending: list[str] = []  # deltas waiting for the next frame
        self.finished = False
        self._loop = asyncio.get_running_loop()
        self._next_frame_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def seq(self) -> int:
        return len(self.sent_deltas)

    def text(self) -> str:
        return "".join(self.sent_deltas) + "".join(self.pending)

    def add(self, delta: str) -> None:
        self.pending.append(delta)
        if self._timer is not None:
            return
        wait = self._next_frame_at - self._loop.time()
        if wait <= 0:
            self.emit()
        else:
            self._timer = self._loop.call_later(wait, self.emit)

    def emit(self) -> None:
        """Send everything pending as one frame (several if it is too large for one websocket message)."""
        self._cancel_timer()
        if not self.pending:
            return
        joined = "".join(self.pending)
        self.pending.clear()
        self._next_frame_at = self._loop.time() + self.frame_interval
        for start in range(0, len(joined), MAX_DELTA_CHARS):
            self.sent_deltas.append(joined[start:start + MAX_DELTA_CHARS])
            frame = self._chunk(len(self.sent_deltas))
            for watcher in tuple(self.watchers):
                watcher.deliver(frame)

    def attach(self, watcher: Watcher, after_seq: int = 0) -> None:
        """Replay the frames after `after_seq`, then follow live ones (no await in between: no gap)."""
        for seq in range(max(after_seq, 0) + 1, len(self.sent_deltas) + 1):
            watcher.deliver(self._chunk(seq))
        self.watchers.add(watcher)

    def _chunk(self, seq: int) -> Frame:
        return Frame(self.message_id, seq=seq, delta=self.sent_deltas[seq - 1], encoder=self.encoder)

    def detach(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    def finish(self, event: dict, timeline: dict | None = None) -> None:
        """Send what is pending, then the terminal event, to every watcher; then let them go."""
        self.emit()
        self.finished = True
        frame = Frame(self.message_id, event=event, encoder=self.encoder, timeline=timeline)
        for watcher in tuple(self.watchers):
            watcher.deliver(frame)
        self.watchers.clear()

    def close(self) -> None:
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

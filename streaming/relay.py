"""The text of one running stream and its fan-out to watchers.

Deltas are joined into at most one `message_chunk` per frame interval
(DESIGN.md principle 8). Every frame sent is kept, in order, so a watcher
that attaches late (a resume) gets exactly the frames it missed, then live
ones. Frames are serialized once and handed to every watcher as text.
"""

import asyncio
import json
from typing import Protocol


# daphne's default websocket_max_message_size (1 MiB) applies to what it sends too,
# less room for the frame header.
MAX_MESSAGE_BYTES = 1024 * 1024 - 1024
# Even escaped six bytes a character, a frame stays under that limit.
MAX_FRAME_CHARS = 128 * 1024


class Watcher(Protocol):
    def deliver(self, message_id: int, text: str, final: bool) -> None:
        """Queue one serialized event; must not block."""


def dump(event: dict) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def dump_terminal(event: dict) -> str:
    """A terminal event as text for its watchers.

    One too large for a websocket message goes without its text: `content` dropped,
    `partial_content` holding only the marker, `content_omitted: true` (its watchers
    have every delta; the row has the text). Decided from the length of the text where
    it can be, so a long answer is not serialized whole only to be thrown away.
    """
    content = event.get("content") or ""
    if 2 * len(content) <= MAX_MESSAGE_BYTES:  # content and partial_content, at least a byte a character
        text = dump(event)
        if len(text) * 4 <= MAX_MESSAGE_BYTES or len(text.encode()) <= MAX_MESSAGE_BYTES:
            return text
    slim = {key: value for key, value in event.items() if key != "content"}
    if "partial_content" in slim:
        slim["partial_content"] = slim["partial_content"][len(content):]
    slim["content_omitted"] = True
    return dump(slim)


class Relay:
    def __init__(self, message_id: int, frame_interval: float):
        self.message_id = message_id
        self.frame_interval = frame_interval
        self.watchers: set[Watcher] = set()
        self.frames: list[str] = []  # delta of each message_chunk sent; seq = index + 1
        self.pending: list[str] = []  # deltas waiting for the next frame
        self.finished = False
        self._loop = asyncio.get_running_loop()
        self._next_frame_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def seq(self) -> int:
        return len(self.frames)

    def text(self) -> str:
        return "".join(self.frames) + "".join(self.pending)

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
        for start in range(0, len(joined), MAX_FRAME_CHARS):
            self.frames.append(joined[start:start + MAX_FRAME_CHARS])
            text = self._chunk_text(len(self.frames))
            for watcher in tuple(self.watchers):
                watcher.deliver(self.message_id, text, False)

    def attach(self, watcher: Watcher, after_seq: int = 0) -> None:
        """Replay the frames after `after_seq`, then follow live ones (no await in between: no gap)."""
        for seq in range(max(after_seq, 0) + 1, len(self.frames) + 1):
            watcher.deliver(self.message_id, self._chunk_text(seq), False)
        self.watchers.add(watcher)

    def _chunk_text(self, seq: int) -> str:
        return dump({"type": "message_chunk", "message_id": self.message_id, "seq": seq, "delta": self.frames[seq - 1]})

    def detach(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    def finish(self, event: dict) -> None:
        """Send what is pending, then the terminal event, to every watcher; then let them go."""
        self.emit()
        self.finished = True
        text = dump_terminal(event)
        for watcher in tuple(self.watchers):
            watcher.deliver(self.message_id, text, True)
        self.watchers.clear()

    def close(self) -> None:
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

"""An offline stand-in model: a canned markdown answer, streamed word by word.

It makes the product usable (and every stop/cancel path testable) without a
key or a network; the answer depends only on the last user message.
"""

import asyncio
import re
import zlib
from collections.abc import AsyncIterator

from .base import continues

WORD = re.compile(r"\S+\s*")

THEMES = [
    {
        "title": "Breaking the problem down",
        "body": (
            "The most reliable way to approach this is to split it into small steps that can "
            "each be checked on their own. Start from what you already know works, change one "
            "thing at a time, and keep a note of what each change did. That sounds slow, but it "
            "is usually faster than a big rewrite, because every step leaves you with something "
            "that runs and a clear idea of where a new problem came from."
        ),
        "bullets": [
            "**Reproduce it first**: a problem you can trigger on demand is half solved.",
            "**Shrink the example** until removing anything else makes the issue disappear.",
            "**Measure before optimising**, since intuition about hot spots is often wrong.",
            "**Write down the fix** next to a test, so it stays fixed next month.",
        ],
        "code": (
            "def solve(problem):\n"
            "    for step in split(problem):\n"
            "        result = attempt(step)\n"
            "        assert check(result), step\n"
            "    return result"
        ),
        "language": "python",
    },
    {
        "title": "A practical overview",
        "body": (
            "There are a few moving parts here, and most of the confusion comes from mixing "
            "them up. One part decides *what* should happen, another decides *when*, and a third "
            "deals with what to do when things go wrong. Keeping those responsibilities apart "
            "makes each of them simple enough to reason about, and it lets you swap one of them "
            "out later without touching the others."
        ),
        "bullets": [
            "**Inputs**: validate them at the edge, then trust them everywhere else.",
            "**State**: keep a single source of truth and derive everything else from it.",
            "**Timing**: make slow work asynchronous and give every wait a timeout.",
            "**Failure**: decide up front what a partial result means for the user.",
        ],
        "code": (
            "async function run(task) {\n"
            "  const controller = new AbortController();\n"
            "  setTimeout(() => controller.abort(), 5000);\n"
            "  return await task(controller.signal);\n"
            "}"
        ),
        "language": "javascript",
    },
    {
        "title": "Weighing the options",
        "body": (
            "There is rarely a single right answer to a question like this; it depends on what "
            "you want to optimise for. A simple solution is easier to understand and to change, "
            "while a clever one may be faster but costs attention every time someone reads it. "
            "A good rule of thumb is to pick the simplest option that meets today's needs and to "
            "leave a clear seam where a more elaborate one could be slotted in."
        ),
        "bullets": [
            "**Simplicity** keeps the cost of every future change low.",
            "**Performance** matters once you have numbers showing it is a bottleneck.",
            "**Robustness** pays off wherever real users and real networks are involved.",
            "**Familiarity** of the team with a tool is worth more than its feature list.",
        ],
        "code": (
            "$ git switch -c try-simple-option\n"
            "$ make test\n"
            "$ git commit -am 'Try the simple option first'"
        ),
        "language": "shell",
    },
]

INTRO = (
    'You asked: "{quote}". That is a good question, and this is the built-in demo model '
    "answering, so take the content with a pinch of salt: it is here to show how a streamed "
    "reply looks, how markdown is rendered while it arrives, and how the stop button cuts an "
    "answer short at any point."
)

CLOSING = (
    "To sum up: keep things small, observable and easy to undo, and the details tend to fall "
    "into place. If you want a real answer, configure an OpenAI-compatible or Anthropic model "
    "with the `LLM_PROVIDER`, `LLM_BASE_URL` and `LLM_API_KEY` settings, and ask again. Until "
    "then, feel free to press stop halfway through this paragraph to see what a cancelled "
    "answer looks like."
)


class DemoProvider:
    name = "demo"
    model = "demo"
    usage = None  # it counts nothing: the runner estimates

    def __init__(self, *, delay: float):
        self.delay = max(0.0, delay)

    async def stream(self, messages: list[dict]) -> AsyncIterator[str]:
        answer = compose_answer(messages)
        if continues(messages) and answer.startswith(messages[-1]["content"]):
            answer = answer[len(messages[-1]["content"]):]  # Continue: the rest of the same answer
        leading = answer[:len(answer) - len(answer.lstrip())]  # WORD would drop it
        for word in ([leading] if leading else []) + WORD.findall(answer):
            # Even a zero delay yields to the loop, so a cancel lands between words.
            await asyncio.sleep(self.delay)
            yield word


def compose_answer(messages: list[dict]) -> str:
    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    quote = " ".join(question.split()) or "nothing in particular"
    if len(quote) > 80:
        quote = quote[:79].rstrip() + "…"
    # crc32, not hash(): the answer must not change between processes.
    theme = THEMES[zlib.crc32(question.encode()) % len(THEMES)]
    bullets = "\n".join(f"- {item}" for item in theme["bullets"])
    return (
        f"## {theme['title']}\n\n"
        f"{INTRO.format(quote=quote)}\n\n"
        f"{theme['body']}\n\n"
        f"A few points worth keeping in mind:\n\n{bullets}\n\n"
        f"For example:\n\n```{theme['language']}\n{theme['code']}\n```\n\n"
        f"{CLOSING}"
    )

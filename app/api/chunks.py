"""A streamed completion as Server-Sent Events (see ChunkWriter)."""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Protocol

import orjson

from app.api.sse import DONE
from app.serving.completion_format import generated_text, head, logprob, logprobs, top_dict, usage
from app.serving.completion_plan import Plan
from app.serving.completions import CompletionService, Feeder
from app.serving.sessions import Lease


class Waker(Protocol):
    """The stream a ChunkWriter renders for (app.api.sse.EventStream)."""

    def wake(self, *_: object) -> None: ...

    def finish(self) -> None: ...


@functools.lru_cache(maxsize=64)
def spaced_words(itos: tuple[str, ...]) -> list[bytes]:
    """Each word's chunk text as JSON, preceded by its space: `" one"`."""
    return [orjson.dumps(" " + word) for word in itos]


NO_LOGPROBS = b',"logprobs":null,"finish_reason":null}]}\n\n'


class ChunkWriter:
    """Renders a streamed completion as Server-Sent Events: one chunk per word as its choice's
    words become final (a word that a stop sequence may still take back waits), a last chunk
    per choice with its finish_reason, the usage chunk if asked, then [DONE]. A chunk is
    preformatted bytes (the chunk's head and each word's text encoded once), byte for byte
    what orjson makes of the chunk object.

    The source of the stream's writer (app.api.sse): with a session, a client that leaves
    stops the generation at once, and the session keeps the prompt and the words sent."""

    def __init__(
        self,
        completions: CompletionService,
        plan: Plan,
        lease: Lease | None = None,
        stack: contextlib.AsyncExitStack | None = None,
    ):
        self.completions = completions
        self.plan = plan
        self.lease = lease
        self.stack = stack or contextlib.AsyncExitStack()
        self.before = completions.service.rewind_point(lease) if lease is not None else None
        n = len(plan.choices)
        self.sent = [0] * n  # generated words rendered, per choice
        self.sent_text = [0] * n  # characters of the text rendered
        self.finished = [False] * n
        self.unfinished = n
        self.echoed = [not plan.echo] * n
        self.delivered_words = 0  # the first choice's words the client was sent
        self._rendered_words = 0
        self.left = False
        self.head = head(plan)
        self.feeder: Feeder | None = None
        opening = b"data: " + orjson.dumps(self.head)[:-1] + b',"choices":[{"index":'
        self.starts = [opening + str(i).encode() + b',"text":' for i in range(n)]
        self.texts = spaced_words(plan.lm.vocab.itos)
        params = plan.choices[0].params
        hold = max((len(s) for s in params.stop_strings), default=1) - 1
        self.hold_chars = hold
        self.hold_words = max((len(s) - 1 for s in params.stop_words), default=0)
        self.include_usage = bool(plan.req.stream_options and plan.req.stream_options.include_usage)

    def start(self, events: Waker) -> None:
        """Submit the choices; every word, and every choice's end, wakes `events`."""
        self.feeder = self.completions.start(self.plan, self.lease, events.finish, events.wake)

    def chunk(self, i: int, text: str, lp: dict[str, Any] | None, finish: str | None) -> bytes:
        return (
            self.starts[i]
            + orjson.dumps(text)
            + b',"logprobs":'
            + orjson.dumps(lp)
            + b',"finish_reason":'
            + orjson.dumps(finish)
            + b"}]}\n\n"
        )

    def ready(self, i: int, out: list[bytes]) -> None:
        """Append the chunks choice i can send now."""
        plan, c = self.plan, self.plan.choices[i]
        gen, itos = c.gen, plan.lm.vocab.itos
        k = len(c.params.forced)
        if not c.started:  # waits for its turn (MAX_QUEUE_SHARE)
            return
        done = c.done
        if not self.echoed[i]:
            if not done and gen is not None and len(gen.words) < k:
                return
            self.echoed[i] = True
            lp = None
            if plan.top >= 0 and gen is not None:
                full = logprobs(plan, c)
                n = len(plan.prompts[c.prompt].ids)
                lp = {key: value[:n] for key, value in full.items()}
            out.append(self.chunk(i, plan.prompts[c.prompt].text, lp, None))
        words: list[int]
        probs: list[float]
        if gen is None:  # never started: the request failed first
            words, probs, final = [], [], 0
        elif done:
            words, probs = gen.generated()
            final = len(words)
        else:
            words, probs = gen.words[k:], gen.probs[k:]
            final = max(0, len(words) - self.hold_words)
            if self.hold_chars:  # the last words a stop string may still cut into
                chars = 0
                while final > 0 and chars < self.hold_chars:
                    final -= 1
                    chars += 1 + len(itos[words[final]])
        sent = self.sent[i]
        if final > sent:
            if plan.top < 0:  # the common case: preformatted
                start, texts = self.starts[i], self.texts
                out += [start + texts[w] + NO_LOGPROBS for w in words[sent:final]]
                self.sent_text[i] += sum(len(itos[w]) + 1 for w in words[sent:final])
            else:
                for j in range(sent, final):
                    piece = " " + itos[words[j]]
                    lp = {
                        "tokens": [piece],
                        "token_logprobs": [logprob(probs[j])],
                        "top_logprobs": [top_dict(itos, gen.tops[k + j])],  # type: ignore[union-attr]
                        "text_offset": [self.offset(i) + self.sent_text[i]],
                    }
                    self.sent_text[i] += len(piece)
                    out.append(self.chunk(i, piece, lp, None))
            self.sent[i] = final
        if done and not self.finished[i]:
            self.finished[i] = True
            self.unfinished -= 1
            rest = generated_text(gen, itos)[self.sent_text[i] :]  # a stop string's cut
            out.append(self.chunk(i, rest, None, (gen and gen.finish) or "length"))

    def offset(self, i: int) -> int:
        c = self.plan.choices[i]
        return len(self.plan.prompts[c.prompt].text) if self.plan.echo else 0

    def usage(self) -> dict[str, Any]:
        return {**self.head, "choices": [], "usage": usage(self.plan)}

    # -- the stream's source (app.api.sse.EventSource) -----------------------------------------
    def render(self) -> tuple[bytes, bool]:
        out: list[bytes] = []
        finished = self.finished
        for i in range(len(finished)):
            if not finished[i]:
                self.ready(i, out)
        self._rendered_words = self.sent[0]
        if self.unfinished:
            return b"".join(out), False
        if self.include_usage:
            out.append(b"data: " + orjson.dumps(self.usage()) + b"\n\n")
        out.append(DONE)
        return b"".join(out), True

    def delivered(self) -> None:
        self.delivered_words = self._rendered_words

    def leave(self) -> None:
        """The client left: stop generating now."""
        self.left = True
        if self.feeder is not None:
            self.completions.release(self.feeder)

    async def close(self) -> None:
        """Close the sequences; a session cut short keeps its prompt and the words sent."""
        try:
            if self.feeder is not None:
                self.completions.release(self.feeder)
            if self.left and self.lease is not None and self.before is not None:
                c = self.plan.choices[0]
                k = len(c.params.forced)
                words = c.gen.words if c.gen is not None else []
                feed = self.plan.prompts[0].ids + words[k : k + self.delivered_words]
                await self.completions.service.keep_sent(self.lease, self.before, feed)
        finally:
            await self.stack.aclose()

"""The two renderers of a generation stream (app.serving.streams) for the one SSE writer
(app.api.sse): our word events, `data: {"word": ..., "prob": ...}` then
`data: {"finish_reason": ...}` (continuations), and OpenAI's completion chunks, then
`data: [DONE]`. A renderer turns what the stream says is ready into bytes; the stream runs
the generations, holds the session and keeps in it the words delivered."""

from __future__ import annotations

import functools
from typing import Any

import orjson

from app.api.sse import DONE, EventSource, EventStream, event
from app.core.config import Settings
from app.core.errors import ServiceError
from app.serving.completion_format import generated_text, head, logprob, logprobs, top_dict, usage
from app.serving.completion_plan import Plan
from app.serving.streams import GenerationStream


def respond(stream: GenerationStream, source: EventSource, settings: Settings) -> EventStream:
    """The response that writes `stream` as `source` renders it."""
    writer = EventStream(settings.SSE_FLUSH_MS / 1000, settings.STREAM_WRITE_TIMEOUT_SECONDS)
    writer.source = source
    stream.listen(writer.wake, writer.finish)
    return writer


class Renderer:
    """What every renderer passes on to its stream (app.api.sse.EventSource)."""

    def __init__(self, stream: GenerationStream):
        self.stream = stream

    def delivered(self) -> None:
        self.stream.delivered()

    def leave(self) -> None:
        self.stream.leave()

    async def close(self) -> None:
        await self.stream.close()


@functools.lru_cache(maxsize=64)
def word_prefixes(itos: tuple[str, ...]) -> list[bytes]:
    """Each word's event up to its probability: `data: {"word":"one","prob":`."""
    return [b'data: {"word":' + orjson.dumps(word) + b',"prob":' for word in itos]


class WordEvents(Renderer):
    """A continuation's words, one event each, then its finish_reason (or its error: the
    status was sent already)."""

    def __init__(self, stream: GenerationStream):
        super().__init__(stream)
        self.prefixes = word_prefixes(stream.itos)
        self.finished = False

    def render(self) -> tuple[bytes, bool]:
        stream = self.stream
        gen = stream.choices[0].gen
        start, end = stream.take(0)
        out = []
        if end > start and gen is not None:
            words, probs, prefixes = gen.words, gen.probs, self.prefixes
            for j in range(start, end):
                out.append(prefixes[words[j]] + orjson.dumps(probs[j]) + b"}\n\n")
        if stream.settled:
            if (error := stream.error) is not None:
                detail = error.detail if isinstance(error, ServiceError) else "internal error"
                out.append(event({"error": detail}))
            else:
                out.append(event({"finish_reason": gen.finish if gen is not None else None}))
            self.finished = True
        return b"".join(out), self.finished


@functools.lru_cache(maxsize=64)
def spaced_words(itos: tuple[str, ...]) -> list[bytes]:
    """Each word's chunk text as JSON, preceded by its space: `" one"`."""
    return [orjson.dumps(" " + word) for word in itos]


NO_LOGPROBS = b',"logprobs":null,"finish_reason":null}]}\n\n'


class CompletionChunks(Renderer):
    """A completion's choices as OpenAI's chunks: one per word (its echo first), a last one
    per choice with its finish_reason, the usage chunk if asked, then [DONE]. A chunk is
    preformatted bytes (the chunk's head and each word's text encoded once), byte for byte
    what orjson makes of the chunk object."""

    def __init__(self, stream: GenerationStream, plan: Plan):
        super().__init__(stream)
        self.plan = plan
        n = len(plan.choices)
        self.sent_text = [0] * n  # characters of each choice's text rendered
        self.finished = [False] * n
        self.unfinished = n
        self.echoed = [not plan.echo] * n
        self.head = head(plan)
        opening = b"data: " + orjson.dumps(self.head)[:-1] + b',"choices":[{"index":'
        self.starts = [opening + str(i).encode() + b',"text":' for i in range(n)]
        self.texts = spaced_words(plan.lm.vocab.itos)
        self.include_usage = bool(plan.req.stream_options and plan.req.stream_options.include_usage)

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
        start, end = self.stream.take(i)
        if end > start and gen is not None:
            words = gen.words
            if plan.top < 0:  # the common case: preformatted
                head, texts = self.starts[i], self.texts
                out += [head + texts[words[k + j]] + NO_LOGPROBS for j in range(start, end)]
                self.sent_text[i] += sum(len(itos[words[k + j]]) + 1 for j in range(start, end))
            else:
                for j in range(start, end):
                    piece = " " + itos[words[k + j]]
                    lp = {
                        "tokens": [piece],
                        "token_logprobs": [logprob(gen.probs[k + j])],
                        "top_logprobs": [top_dict(itos, gen.tops[k + j])],
                        "text_offset": [self.offset(i) + self.sent_text[i]],
                    }
                    self.sent_text[i] += len(piece)
                    out.append(self.chunk(i, piece, lp, None))
        if done and not self.finished[i]:
            self.finished[i] = True
            self.unfinished -= 1
            rest = generated_text(gen, itos)[self.sent_text[i] :]  # a stop string's cut word
            out.append(self.chunk(i, rest, None, (gen and gen.finish) or "length"))

    def offset(self, i: int) -> int:
        c = self.plan.choices[i]
        return len(self.plan.prompts[c.prompt].text) if self.plan.echo else 0

    def render(self) -> tuple[bytes, bool]:
        out: list[bytes] = []
        finished = self.finished
        for i in range(len(finished)):
            if not finished[i]:
                self.ready(i, out)
        if self.unfinished or not self.stream.settled:
            return b"".join(out), False
        if self.include_usage:
            out.append(event({**self.head, "choices": [], "usage": usage(self.plan)}))
        out.append(DONE)
        return b"".join(out), True

"""OpenAI's legacy completions over the same engine as /v1/continuation.

Every choice (a prompt, n or best_of times) is one generation of the step batcher, so the
choices of a request, and those of every other request, advance together in one batch. The
probabilities are the engine's own rows: `logprobs` are the natural logs of what
/v1/continuation returns as `probs`, and greedy is its greedy. Echo scoring feeds the prompt
one word a pass, each word "chosen" as the prompt says, so its probabilities come out of the
same rows. Stop strings are matched on the generated text, as OpenAI does: a word or a sequence
of words at word boundaries, any other string as a substring of the text.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from app.core.errors import BadText, InvalidRequest, OverLimit
from app.core.redact import clip_number
from app.core.security import ANONYMOUS
from app.engine.batcher import Applied, Generation, Job
from app.engine.registry import LoadedModel
from app.engine.sampling import top_words
from app.engine.sequences import Sequence
from app.schemas.openai import CompletionRequest
from app.serving.logit_bias import logit_bias
from app.serving.service import PredictionService
from app.serving.sessions import Lease
from model_store import split_words

log = logging.getLogger("app.completions")

MAX_STOPS = 4  # OpenAI's limit
MIN_LOGPROB = -9999.0  # log(0) as JSON can carry it (vLLM's choice)
GREEDY_RNG = random.Random(0)  # never drawn from: temperature 0 is argmax
_TOKEN_RE = re.compile(r"[^\s,]+|,")  # the tokenizer's, with positions


def logprob(p: float) -> float:
    return math.log(p) if p > 0 else MIN_LOGPROB


@dataclass(slots=True)
class CompletionGeneration(Generation):
    """A generation with OpenAI's options: forced prompt words (echo scoring), stop strings
    on the text, logit bias and penalties, top log-probabilities."""

    forced: list[int] = field(default_factory=list)  # prompt ids to score before generating
    word_stops: list[tuple[int, ...]] = field(default_factory=list)
    string_stops: list[str] = field(default_factory=list)
    itos: tuple[str, ...] = ()
    spaced: list[str] = field(default_factory=list)  # each word preceded by a space, by id
    bias: list[float] | None = None  # added to the logits, by id
    presence: float = 0.0
    frequency: float = 0.0
    keep_top: int = -1  # top log-probabilities to keep per word (-1: none)
    tops: list[list[tuple[int, float]]] = field(default_factory=list)
    counts: dict[int, int] = field(default_factory=dict)  # generated words so far
    text: str = ""  # the generated text so far (with string stops only)
    cut: int = -1  # words dropped from the end by a stop sequence
    cut_text: str | None = None  # the text up to a stop string, when one matched

    def greedy(self) -> bool:
        return (
            self.temperature == 0
            and self.keep_top < 0
            and self.bias is None
            and not self.presence
            and not self.frequency  # choose() counts the words for the penalties
            and len(self.words) >= len(self.forced)
        )

    def choose(self, row: list[float]) -> int:
        if len(self.words) < len(self.forced):  # scoring the prompt: its next word
            word = self.forced[len(self.words)]
            if self.keep_top >= 0:
                self.tops.append(top_words(row, self.keep_top))
            return word
        if self.keep_top >= 0:
            self.tops.append(top_words(row, self.keep_top))
        if self.bias is not None or self.counts:
            row = self.adjusted(row)
        if self.temperature == 0:
            word = max(range(len(row)), key=row.__getitem__)
        else:
            word = Generation.choose(self, row)
        if self.presence or self.frequency:
            self.counts[word] = self.counts.get(word, 0) + 1
        return word

    def adjusted(self, row: list[float]) -> list[float]:
        """The row with OpenAI's logit bias and penalties applied (in probability space:
        p * exp(bias - count * frequency - presence)), normalized."""
        add = list(self.bias) if self.bias is not None else [0.0] * len(row)
        for word, count in self.counts.items():
            add[word] -= count * self.frequency + self.presence
        out = [p * math.exp(a) if p > 0 else 0.0 for p, a in zip(row, add, strict=True)]
        total = sum(out)
        return [p / total for p in out] if total > 0 else row

    def stops(self, word: int) -> bool:
        n = len(self.words) - len(self.forced)  # words generated so far
        if n < 0:
            return False
        if word in self.stop:
            self._drop_top()
            return True
        for seq in self.word_stops:
            k = len(seq)
            if (
                k - 1 <= n
                and seq[-1] == word
                and tuple(self.words[len(self.words) - k + 1 :]) == seq[:-1]
            ):
                self.cut = k - 1
                self._drop_top()
                return True
        if self.string_stops:
            before = len(self.text)
            text = self.text + " " + self.itos[word]
            for s in self.string_stops:
                at = text.find(s, max(0, before - len(s) + 1))
                if at >= 0:
                    self.cut_text = text[:at]
                    self._drop_top()
                    return True
            self.text = text
        return False

    def _drop_top(self) -> None:
        if self.keep_top >= 0:
            self.tops.pop()

    # -- the result ----------------------------------------------------------------------
    def generated(self) -> tuple[list[int], list[float]]:
        """The generated words and their probabilities, stop sequences left out."""
        k = len(self.forced)
        end = len(self.words) - max(self.cut, 0)
        return self.words[k:end], self.probs[k:end]

    def n_generated(self) -> int:
        return len(self.words) - len(self.forced) - max(self.cut, 0)

    def generated_text(self) -> str:
        if self.cut_text is not None:
            return self.cut_text
        k = len(self.forced)
        end = len(self.words) - max(self.cut, 0)
        return "".join(map(self.spaced.__getitem__, self.words[k:end]))


@dataclass(slots=True)
class Choice:
    """One sample of one prompt."""

    prompt: int  # index of its prompt
    gen: CompletionGeneration
    seq: Sequence | None = None  # the lease's, or its own (closed when done)
    job: Job | None = None
    started: bool = False  # submitted (or found to need no job); its job's end ends it
    index: int = 0  # in the response

    @property
    def done(self) -> bool:
        return self.started and (self.job is None or self.job.future.done())


class Feeder:
    """Submits a plan's choices to the engine, at most `window` jobs at once: as one ends, the
    next goes in, in the place the ended one held (`reserved`: a full queue does not refuse
    it). So one request never holds more than its share of the model's queue, and since the
    engine takes its queue in turn, a large request's words come interleaved with everyone
    else's: it slows down instead of starving others. A choice's own sequence is closed as
    soon as it ends (its state is no longer needed; its words are in its generation)."""

    def __init__(
        self,
        plan: Plan,
        lease: Lease | None,
        window: int,
        applied: Applied | None,
        on_end: Callable[[], None] | None,
    ):
        self.plan = plan
        self.lease = lease
        self.window = window
        self.applied = applied
        self.on_end = on_end
        self.next = 0  # the first choice not yet started
        self.running = 0
        self.stopped = False
        self.error: BaseException | None = None
        self.finished = asyncio.Event()

    def fill(self, reserved: bool) -> None:
        choices = self.plan.choices
        while self.running < self.window and self.next < len(choices) and not self.stopped:
            c = choices[self.next]
            self.next += 1
            self.submit(c, reserved)
        if self.running == 0 and self.next >= len(choices):
            self.finished.set()

    def submit(self, c: Choice, reserved: bool) -> None:
        lease, gen = self.lease, c.gen
        ids = self.plan.prompts[c.prompt].ids
        feed = ids[: len(ids) - len(gen.forced)]
        c.seq = lease.seq if lease is not None else self.plan.lm.batcher.open()
        c.started = True
        if gen.max_words == 0:  # echo of a one-word prompt, nothing to generate
            gen.finish = "length"
            if lease is None or not feed:
                self.close(c)
                return
            c.job = c.seq.submit(feed, top_k=1, on_applied=self.applied, reserved=reserved)
        else:
            c.job = c.seq.submit(feed, gen=gen, on_applied=self.applied, reserved=reserved)
        self.running += 1
        c.job.future.add_done_callback(functools.partial(self.ended, c))

    def ended(self, c: Choice, future: asyncio.Future[object]) -> None:
        self.running -= 1
        self.close(c)
        if self.stopped:
            return
        if not future.cancelled() and (error := future.exception()) is not None:
            self.fail(error)
        else:
            try:
                self.fill(reserved=True)
            except Exception as e:  # the engine stopped, say: the rest cannot run
                self.fail(e)
        if self.on_end is not None:
            self.on_end()

    def close(self, c: Choice) -> None:
        if self.lease is None and c.seq is not None:
            c.seq.close()
        c.seq = None

    def fail(self, error: BaseException) -> None:
        """No more submits; the choices never started count as ended (a stream ends them)."""
        self.error = error
        self.stop()
        for c in self.plan.choices[self.next :]:
            c.started = True
        self.next = len(self.plan.choices)
        self.finished.set()

    def stop(self) -> None:
        self.stopped = True


@dataclass
class Prompt:
    text: str  # as the response echoes it
    ids: list[int]

    @property
    def pieces(self) -> list[str]:
        """Each token's text as it reads in `text` (the spaces before it included)."""
        return pieces(self.text)


@dataclass
class Plan:
    """A checked completion request: its model, prompts and choices, not yet run."""

    req: CompletionRequest
    lm: LoadedModel
    prompts: list[Prompt]
    choices: list[Choice]
    n: int
    best_of: int
    max_tokens: int
    top: int  # logprobs (-1: none)
    echo: bool
    session_id: str | None
    id: str = field(default_factory=lambda: f"cmpl-{secrets.token_hex(16)}")
    created: int = field(default_factory=lambda: int(time.time()))
    feeder: Feeder | None = None  # once started

    @property
    def fingerprint(self) -> str:
        ckpt = self.lm.checkpoint
        return f"{ckpt.name}-v{ckpt.ref.version}-{ckpt.sha256[:12]}"


def prompt_items(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """The prompts of a request, one item each: a text, or a list of token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and isinstance(prompt[0], int):
        return [prompt]
    return list(prompt)  # type: ignore[arg-type]


class CompletionService:
    """Plans, runs and renders completions; handed the PredictionService for its models,
    sessions and checks."""

    def __init__(self, service: PredictionService):
        self.service = service

    # -- checks --------------------------------------------------------------------------
    def plan(self, req: CompletionRequest, session_header: str | None = None) -> Plan:
        """Check everything a request asks before anything runs (a bad one changes nothing)."""
        svc = self.service
        if req.suffix:
            raise InvalidRequest(
                "suffix is not supported: these models only continue a text left to right",
                "suffix",
            )
        session_id = req.session_id or session_header
        if req.session_id and session_header and req.session_id != session_header:
            raise InvalidRequest(
                "session_id and the X-Session-ID header name different sessions", "session_id"
            )
        lm = svc.model(req.model)
        n = req.n or 1
        best_of = req.best_of or n
        if best_of < n:
            raise InvalidRequest(f"best_of is {best_of}; it must be at least n ({n})", "best_of")
        if req.stream and best_of > n:
            raise InvalidRequest("best_of cannot be used with stream", "best_of")
        max_tokens = 16 if req.max_tokens is None else req.max_tokens
        if max_tokens > svc.settings.MAX_WORDS:
            raise InvalidRequest(
                f"max_tokens is {clip_number(max_tokens)}; this server generates at most "
                f"{svc.settings.MAX_WORDS} (MAX_WORDS)",
                "max_tokens",
            )
        echo = bool(req.echo)
        if max_tokens == 0 and not echo:
            raise InvalidRequest(
                "max_tokens is 0: ask for at least 1 word, or set echo to score the prompt",
                "max_tokens",
            )
        words = len(lm.vocab.words)
        top = -1 if req.logprobs is None else req.logprobs
        if top > words:
            raise InvalidRequest(
                f"logprobs is {clip_number(top)}; it must be between 0 and {words} "
                "(the vocabulary's words)",
                "logprobs",
            )
        svc.check_top_k(lm, req.top_k)
        self.admit_choices(req.prompt, n, best_of)
        prompts = self.prompts(lm, req.prompt, session_id is not None)
        self.admit_tokens(prompts, best_of, max_tokens, top, echo)
        if session_id is not None and (len(prompts) > 1 or best_of > 1):
            raise InvalidRequest(
                "a session continues one text: give one prompt and n = best_of = 1", "n"
            )
        word_stops, string_stops = self.stops(lm, req.stop)
        bias = self.logit_bias(lm, req.logit_bias)
        temperature = 1.0 if req.temperature is None else req.temperature
        shared_rng = random.Random() if temperature > 0 and req.seed is None else GREEDY_RNG
        single = frozenset(seq[0] for seq in word_stops if len(seq) == 1)
        multi = [s for s in word_stops if len(s) > 1]
        presence, frequency = req.presence_penalty or 0.0, req.frequency_penalty or 0.0
        # the options every choice shares, given only when not the default (a prompt list
        # builds hundreds of generations)
        common: dict[str, Any] = {
            "temperature": temperature,
            "feed_last": session_id is not None,
            "itos": lm.vocab.itos,
            "spaced": spaced(lm.vocab.itos),
        }
        optional = {
            "top_k": req.top_k,
            "top_p": req.top_p,
            "stop": single,
            "word_stops": multi,
            "string_stops": string_stops,
            "bias": bias,
            "presence": presence,
            "frequency": frequency,
        }
        common |= {key: value for key, value in optional.items() if value}
        if top >= 0:
            common["keep_top"] = top
        choices = []
        for p, prompt in enumerate(prompts):
            score = top >= 0 and echo
            forced = prompt.ids[0 if session_id else 1 :] if score else []
            for k in range(best_of):
                if req.seed is not None:
                    rng = random.Random(req.seed if k == 0 else f"{req.seed}/{k}")
                else:
                    rng = shared_rng
                gen = CompletionGeneration(
                    max_words=len(forced) + max_tokens, rng=rng, forced=forced, **common
                )
                choices.append(Choice(p, gen))
        if req.user:
            log.info("completion for user %r: %d choices", req.user[:64], len(choices))
        return Plan(req, lm, prompts, choices, n, best_of, max_tokens, top, echo, session_id)

    # -- admission: a request's cost from its fields, before anything is built -------------
    def admit_choices(
        self, prompt: str | list[str] | list[int] | list[list[int]], n: int, best_of: int
    ) -> None:
        """OverLimit past MAX_CHOICES (prompts x best_of), counted from the request alone."""
        count = len(prompt_items(prompt))
        limit = self.service.settings.MAX_CHOICES
        if count * best_of > limit:
            per = f"best_of {best_of}" if best_of > n else f"n {n}"
            raise OverLimit(
                f"this request asks for {count * best_of:,} choices ({count:,} prompts x {per}); "
                f"this server runs at most {limit:,} for one request (MAX_CHOICES)",
                "best_of" if best_of > n else ("n" if n > 1 else "prompt"),
            )

    def admit_tokens(
        self, prompts: list[Prompt], best_of: int, max_tokens: int, top: int, echo: bool
    ) -> None:
        """OverLimit past MAX_REQUEST_TOKENS (choices x (prompt tokens + max_tokens)) or
        MAX_LOGPROB_ENTRIES (scored tokens x (logprobs + 1)), from the prompts' ids."""
        settings = self.service.settings
        prompt_tokens = sum(len(p.ids) for p in prompts)
        tokens = best_of * (prompt_tokens + len(prompts) * max_tokens)
        if tokens > settings.MAX_REQUEST_TOKENS:
            raise OverLimit(
                f"this request feeds and generates {tokens:,} tokens ({best_of} x "
                f"({prompt_tokens:,} prompt tokens + {len(prompts):,} prompts x max_tokens "
                f"{max_tokens})); this server takes at most {settings.MAX_REQUEST_TOKENS:,} "
                "for one request (MAX_REQUEST_TOKENS)",
                "max_tokens" if len(prompts) * max_tokens > prompt_tokens else "prompt",
            )
        if top < 0:
            return
        scored = best_of * ((prompt_tokens if echo else 0) + len(prompts) * max_tokens)
        entries = scored * (top + 1)
        if entries > settings.MAX_LOGPROB_ENTRIES:
            raise OverLimit(
                f"this request returns {entries:,} log-probabilities ({scored:,} scored tokens "
                f"x (logprobs {top} + 1)); this server returns at most "
                f"{settings.MAX_LOGPROB_ENTRIES:,} for one request (MAX_LOGPROB_ENTRIES)",
                "logprobs",
            )

    def prompts(
        self, lm: LoadedModel, prompt: str | list[str] | list[int] | list[list[int]], session: bool
    ) -> list[Prompt]:
        raw = prompt_items(prompt)
        if not raw:
            raise InvalidRequest("prompt is an empty list: give at least one prompt", "prompt")
        out = []
        for item in raw:
            if isinstance(item, str):
                ids = self.service.encode(lm, item, need_words=not session)
                out.append(Prompt(item, ids))
            else:
                out.append(self.token_prompt(lm, item, session))
        return out

    def token_prompt(self, lm: LoadedModel, ids: list[int], session: bool) -> Prompt:
        allowed = set(lm.vocab.typable.values())
        for pos, i in enumerate(ids):
            if i not in allowed:
                raise BadText(
                    f"token id {clip_number(i)} at position {pos} is not a word of model "
                    f"{lm.name!r} (GET /v1/models/{lm.name} lists its vocabulary by id)"
                )
        if not ids and not session:
            raise BadText("text has no words: give at least one word of the model's vocabulary")
        text = " ".join(lm.vocab.decode(ids))
        return Prompt(text, list(ids))

    def stops(
        self, lm: LoadedModel, stop: str | list[str] | None
    ) -> tuple[list[tuple[int, ...]], list[str]]:
        """Word sequences (matched on words) and other strings (matched on the text)."""
        given = [stop] if isinstance(stop, str) else list(stop or [])
        if len(given) > MAX_STOPS:
            raise InvalidRequest(
                f"stop has {len(given)} strings; it takes at most {MAX_STOPS}", "stop"
            )
        word_stops, string_stops = [], []
        for s in given:
            if not s:
                raise InvalidRequest("stop strings cannot be empty", "stop")
            tokens = split_words(s)
            if (
                tokens
                and s.strip() == " ".join(tokens)
                and all(t in lm.vocab.words for t in tokens)
            ):
                word_stops.append(tuple(lm.vocab.stoi[t] for t in tokens))
            else:
                string_stops.append(s)
        return word_stops, string_stops

    def logit_bias(self, lm: LoadedModel, bias: dict[str, float] | None) -> list[float] | None:
        return logit_bias(lm.vocab, lm.name, bias)

    # -- running -------------------------------------------------------------------------
    def window(self, plan: Plan) -> int:
        """The jobs one request may have in its model's queue at once (MAX_QUEUE_SHARE)."""
        return max(1, int(plan.lm.batcher.config.max_queue * self.service.settings.MAX_QUEUE_SHARE))

    def start(
        self, plan: Plan, lease: Lease | None = None, on_end: Callable[[], None] | None = None
    ) -> None:
        """Submit the choices to the engine, one job each, a window of them at a time (see
        Feeder); `on_end` hears of each choice's end. A full queue refuses the request here
        (AtCapacity), before any word is generated."""
        applied = self.service.applied(lease) if lease is not None else None
        plan.feeder = Feeder(plan, lease, self.window(plan), applied, on_end)
        try:
            plan.feeder.fill(reserved=False)
        except BaseException:
            self.release(plan, lease)
            raise

    def release(self, plan: Plan, lease: Lease | None) -> None:
        """Stop: cancel what still runs (the batcher drops it), submit nothing more, and close
        the choices' sequences."""
        if plan.feeder is not None:
            plan.feeder.stop()
        for c in plan.choices:
            if c.job is not None and not c.job.future.done():
                c.job.future.cancel()
            if c.seq is not None and lease is None:
                c.seq.close()
            c.seq = None

    async def wait(self, plan: Plan) -> None:
        """Until every choice has ended; the first error of one, if any."""
        assert plan.feeder is not None, "a plan waited for before it started"
        await plan.feeder.finished.wait()
        if plan.feeder.error is not None:
            raise plan.feeder.error

    async def run(self, plan: Plan, owner: str = ANONYMOUS) -> dict[str, Any]:
        """Run a non-streamed completion; the response body."""
        if plan.session_id is None:
            self.start(plan)
            try:
                await self.wait(plan)
            finally:
                self.release(plan, None)
            return self.body(plan)
        async with self.service.sessions.lease(plan.session_id, owner) as lease:
            self.check_session(plan, lease)
            self.start(plan, lease)
            try:
                await self.wait(plan)
            finally:
                self.release(plan, lease)
        return self.body(plan)

    def check_session(self, plan: Plan, lease: Lease) -> None:
        if lease.model.name != plan.lm.name:
            if plan.req.model is not None:
                raise InvalidRequest(
                    f"session {lease.id} runs model {lease.model.name!r}, not {plan.lm.name!r}",
                    "model",
                )
            # no model named: the session's; plan again for its vocabulary
            plan.lm = lease.model
            fresh = self.plan(plan.req.model_copy(update={"model": lease.model.name}), lease.id)
            plan.prompts, plan.choices = fresh.prompts, fresh.choices
        if not plan.prompts[0].ids and not lease.tokens_seen:
            raise BadText("the session has seen no word yet: give a text to continue from")
        if not lease.tokens_seen:  # the first word of a fresh state has no probability
            for c in plan.choices:
                if c.gen.keep_top >= 0 and plan.echo:
                    c.gen.forced = c.gen.forced[1:]
                    c.gen.max_words -= 1

    # -- rendering -----------------------------------------------------------------------
    def body(self, plan: Plan) -> dict[str, Any]:
        ranked = self.ranked(plan)
        return {
            "id": plan.id,
            "object": "text_completion",
            "created": plan.created,
            "model": plan.lm.name,
            "system_fingerprint": plan.fingerprint,
            "choices": [self.choice_body(plan, c) for c in ranked],
            "usage": usage(plan),
        }

    def ranked(self, plan: Plan) -> list[Choice]:
        """The n choices of each prompt (the likeliest n of best_of), indexed in order."""
        if plan.best_of == plan.n:
            chosen = plan.choices
        else:
            chosen = []
            for p in range(len(plan.prompts)):
                mine = plan.choices[p * plan.best_of : (p + 1) * plan.best_of]
                mine.sort(key=lambda c: -sum(map(logprob, c.gen.generated()[1])))
                chosen += mine[: plan.n]
        for i, c in enumerate(chosen):
            c.index = i
        return chosen

    def choice_body(self, plan: Plan, c: Choice) -> dict[str, Any]:
        gen = c.gen
        text = gen.generated_text()
        prompt = plan.prompts[c.prompt]
        if plan.echo:
            text = prompt.text + text
        return {
            "index": c.index,
            "text": text,
            "logprobs": self.logprobs(plan, c) if plan.top >= 0 else None,
            "finish_reason": gen.finish,
        }

    def logprobs(self, plan: Plan, c: Choice) -> dict[str, Any]:
        gen, itos = c.gen, plan.lm.vocab.itos
        tokens: list[str] = []
        token_logprobs: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        offsets: list[int] = []
        at = 0
        if plan.echo:
            prompt = plan.prompts[c.prompt]
            scored = len(gen.forced)
            first = len(prompt.ids) - scored  # tokens with no probability (0 or 1)
            for i, piece in enumerate(prompt.pieces):
                tokens.append(piece)
                offsets.append(at)
                at += len(piece)
                if i < first:
                    token_logprobs.append(None)
                    tops.append(None)
                else:
                    token_logprobs.append(logprob(gen.probs[i - first]))
                    tops.append(top_dict(itos, gen.tops[i - first]))
        words, probs = gen.generated()
        k = len(gen.forced)
        for j, (w, p) in enumerate(zip(words, probs, strict=True)):
            piece = " " + itos[w]
            tokens.append(piece)
            offsets.append(at)
            at += len(piece)
            token_logprobs.append(logprob(p))
            tops.append(top_dict(itos, gen.tops[k + j]))
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": tops,
            "text_offset": offsets,
        }


def top_dict(itos: tuple[str, ...], top: list[tuple[int, float]]) -> dict[str, float]:
    return {" " + itos[i]: logprob(p) for i, p in top}


def pieces(text: str) -> list[str]:
    """Each token's text in `text`, from the end of the one before (so they join into
    `text`); the last takes the text's trailing spaces."""
    out, end = [], 0
    for m in _TOKEN_RE.finditer(text):
        out.append(text[end : m.end()])
        end = m.end()
    if out:
        out[-1] += text[end:]
    return out


class Waker(Protocol):
    """The stream a ChunkWriter renders for (app.api.sse.EventStream)."""

    def wake(self, *_: object) -> None: ...

    def finish(self) -> None: ...


@functools.lru_cache(maxsize=64)
def spaced(itos: tuple[str, ...]) -> list[str]:
    """Each word as a completion's text has it: preceded by a space."""
    return [" " + word for word in itos]


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
        self.head = {
            "id": plan.id,
            "object": "text_completion",
            "created": plan.created,
            "model": plan.lm.name,
            "system_fingerprint": plan.fingerprint,
        }
        opening = b"data: " + orjson.dumps(self.head)[:-1] + b',"choices":[{"index":'
        self.starts = [opening + str(i).encode() + b',"text":' for i in range(n)]
        self.texts = spaced_words(plan.lm.vocab.itos)
        hold = max((len(s) for s in plan.choices[0].gen.string_stops), default=1) - 1
        self.hold_chars = hold
        self.hold_words = max((len(s) - 1 for s in plan.choices[0].gen.word_stops), default=0)
        self.include_usage = bool(plan.req.stream_options and plan.req.stream_options.include_usage)

    def start(self, events: Waker) -> None:
        """Submit the choices; every word, and every choice's end, wakes `events`."""
        for c in self.plan.choices:
            c.gen.on_word = events.wake
        self.completions.start(self.plan, self.lease, events.finish)

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
        k = len(gen.forced)
        if not c.started:  # waits for its turn (MAX_QUEUE_SHARE)
            return
        done = c.done
        if not self.echoed[i]:
            if not done and len(gen.words) < k:
                return
            self.echoed[i] = True
            lp = None
            if plan.top >= 0:
                full = self.completions.logprobs(plan, c)
                n = len(plan.prompts[c.prompt].ids)
                lp = {key: value[:n] for key, value in full.items()}
            out.append(self.chunk(i, plan.prompts[c.prompt].text, lp, None))
        if done:
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
                        "top_logprobs": [top_dict(itos, gen.tops[k + j])],
                        "text_offset": [self.offset(i) + self.sent_text[i]],
                    }
                    self.sent_text[i] += len(piece)
                    out.append(self.chunk(i, piece, lp, None))
            self.sent[i] = final
        if done and not self.finished[i]:
            self.finished[i] = True
            self.unfinished -= 1
            rest = gen.generated_text()[self.sent_text[i] :]  # a stop string's cut word
            out.append(self.chunk(i, rest, None, gen.finish or "length"))

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
        out.append(b"data: [DONE]\n\n")
        return b"".join(out), True

    def delivered(self) -> None:
        self.delivered_words = self._rendered_words

    def leave(self) -> None:
        """The client left: stop generating now."""
        self.left = True
        self.completions.release(self.plan, self.lease)

    async def close(self) -> None:
        """Close the sequences; a session cut short keeps its prompt and the words sent."""
        try:
            self.completions.release(self.plan, self.lease)
            if self.left and self.lease is not None and self.before is not None:
                c = self.plan.choices[0]
                k = len(c.gen.forced)
                feed = self.plan.prompts[0].ids + c.gen.words[k : k + self.delivered_words]
                await self.completions.service.keep_sent(self.lease, self.before, feed)
        finally:
            await self.stack.aclose()


def usage(plan: Plan) -> dict[str, int]:
    prompt_tokens = sum(len(p.ids) for p in plan.prompts)
    completion_tokens = sum(c.gen.n_generated() for c in plan.choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }

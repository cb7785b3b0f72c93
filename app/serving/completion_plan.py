"""Planning a completion: OpenAI's request checked against the model and the settings, its
prompts encoded, and one generation's sampling parameters per choice (a prompt, n or best_of
times), before anything runs: a refused request changes nothing."""

from __future__ import annotations

import logging
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from app.core.errors import BadText, InvalidRequest, OverLimit
from app.core.redact import clip_number
from app.engine.params import SamplingParams
from app.engine.registry import LoadedModel
from app.schemas.openai import CompletionRequest
from app.serving.logit_bias import logit_bias
from app.serving.runs import Choice
from app.serving.service import PredictionService
from model_store import split_words

log = logging.getLogger("app.completions")

MAX_STOPS = 4  # OpenAI's limit
GREEDY_RNG = random.Random(0)  # never drawn from: temperature 0 is argmax
Prompts = str | list[str] | list[int] | list[list[int]]


@dataclass
class Prompt:
    text: str  # as the response echoes it
    ids: list[int]


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

    @property
    def fingerprint(self) -> str:
        ckpt = self.lm.checkpoint
        return f"{ckpt.name}-v{ckpt.ref.version}-{ckpt.sha256[:12]}"


def prompt_items(prompt: Prompts) -> list[str | list[int]]:
    """The prompts of a request, one item each: a text, or a list of token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and isinstance(prompt[0], int):
        return [prompt]
    return list(prompt)  # type: ignore[arg-type]


class Planner:
    """Plans completions; handed the PredictionService for its models, settings and checks."""

    def __init__(self, service: PredictionService):
        self.service = service

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
        bias = logit_bias(lm.vocab, lm.name, req.logit_bias)
        temperature = 1.0 if req.temperature is None else req.temperature
        shared_rng = random.Random() if temperature > 0 and req.seed is None else GREEDY_RNG
        single = frozenset(seq[0] for seq in word_stops if len(seq) == 1)
        multi = [s for s in word_stops if len(s) > 1]
        presence, frequency = req.presence_penalty or 0.0, req.frequency_penalty or 0.0
        # the options every choice shares, given only when not the default (a prompt list
        # builds hundreds of generations)
        common: dict[str, Any] = {"temperature": temperature, "feed_last": session_id is not None}
        optional = {
            "top_k": req.top_k,
            "top_p": req.top_p,
            "stop": single,
            "stop_words": tuple(multi),
            "stop_strings": tuple(string_stops),
            "logit_bias": tuple(bias) if bias is not None else None,
            "presence_penalty": presence,
            "frequency_penalty": frequency,
        }
        common |= {key: value for key, value in optional.items() if value}
        if top >= 0:
            common["logprobs"] = top
        choices = []
        score = top >= 0 and echo
        shared = None  # without a seed or scored words, every choice has the same parameters
        for p, prompt in enumerate(prompts):
            forced = tuple(prompt.ids[0 if session_id else 1 :]) if score else ()
            for k in range(best_of):
                if req.seed is not None:  # each choice's own draws
                    rng = random.Random(req.seed if k == 0 else f"{req.seed}/{k}")
                    params = SamplingParams(max_tokens, rng=rng, forced=forced, **common)
                elif score or shared is None:
                    params = SamplingParams(max_tokens, rng=shared_rng, forced=forced, **common)
                    shared = params
                else:
                    params = shared
                choices.append(Choice(p, params))
        if req.user:
            log.info("completion for user %r: %d choices", req.user[:64], len(choices))
        return Plan(req, lm, prompts, choices, n, best_of, max_tokens, top, echo, session_id)

    # -- admission: a request's cost from its fields, before anything is built -------------
    def admit_choices(self, prompt: Prompts, n: int, best_of: int) -> None:
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

    def prompts(self, lm: LoadedModel, prompt: Prompts, session: bool) -> list[Prompt]:
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

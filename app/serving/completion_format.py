"""A completion's answer in OpenAI's shapes, from its plan and its generations: the body, and
the pieces a stream's chunks are made of (the head, a choice's text and log-probabilities)."""

from __future__ import annotations

import functools
import math
from typing import Any

from app.engine.generation import Generation
from app.serving.completion_plan import Choice, Plan
from model_store import token_ends

MIN_LOGPROB = -9999.0  # log(0) as JSON can carry it (vLLM's choice)


def logprob(p: float) -> float:
    return math.log(p) if p > 0 else MIN_LOGPROB


@functools.lru_cache(maxsize=64)
def spaced(itos: tuple[str, ...]) -> list[str]:
    """Each word as a completion's text has it: preceded by a space."""
    return [" " + word for word in itos]


def generated_text(gen: Generation | None, itos: tuple[str, ...]) -> str:
    """A choice's generated text: its words, each after a space, up to a stop string."""
    if gen is None:
        return ""
    if gen.cut_text is not None:
        return gen.cut_text
    return "".join(map(spaced(itos).__getitem__, gen.generated()[0]))


def head(plan: Plan) -> dict[str, Any]:
    """The fields every chunk and the body start with."""
    return {
        "id": plan.id,
        "object": "text_completion",
        "created": plan.created,
        "model": plan.req.model or plan.lm.name,  # as given (NAME or NAME@VERSION)
        "system_fingerprint": plan.fingerprint,
    }


def body(plan: Plan) -> dict[str, Any]:
    choices = [choice_body(plan, c) for c in ranked(plan)]
    return {**head(plan), "choices": choices, "usage": usage(plan)}


def ranked(plan: Plan) -> list[Choice]:
    """The n choices of each prompt (the likeliest n of best_of), indexed in order."""
    if plan.best_of == plan.n:
        chosen = plan.choices
    else:
        chosen = []
        for p in range(len(plan.prompts)):
            mine = plan.choices[p * plan.best_of : (p + 1) * plan.best_of]
            mine.sort(key=lambda c: -sum(map(logprob, c.gen.generated()[1] if c.gen else [])))
            chosen += mine[: plan.n]
    for i, c in enumerate(chosen):
        c.index = i
    return chosen


def choice_body(plan: Plan, c: Choice) -> dict[str, Any]:
    gen = c.gen
    text = generated_text(gen, plan.lm.vocab.itos)
    prompt = plan.prompts[c.prompt]
    if plan.echo:
        text = prompt.text + text
    return {
        "index": c.index,
        "text": text,
        "logprobs": logprobs(plan, c) if plan.top >= 0 else None,
        "finish_reason": gen.finish if gen is not None else None,
    }


def logprobs(plan: Plan, c: Choice) -> dict[str, Any]:
    gen, itos = c.gen, plan.lm.vocab.itos
    assert gen is not None, "logprobs of a choice that never started"
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    at = 0
    if plan.echo:
        prompt = plan.prompts[c.prompt]
        scored = len(c.params.forced)
        first = len(prompt.ids) - scored  # tokens with no probability (0 or 1)
        for i, piece in enumerate(pieces(prompt.text)):
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
    k = len(c.params.forced)
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
    for at in token_ends(text):
        out.append(text[end:at])
        end = at
    if out:
        out[-1] += text[end:]
    return out


def usage(plan: Plan) -> dict[str, int]:
    prompt_tokens = sum(len(p.ids) for p in plan.prompts)
    completion_tokens = sum(c.gen.n_generated() for c in plan.choices if c.gen is not None)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }

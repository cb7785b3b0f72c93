"""How a generation picks its words: one frozen options object (vLLM's `SamplingParams`),
the same for /v1/continuation, sessions and /v1/completions."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """A generation's options, checked by the serving layer before they get here."""

    max_words: int  # words to generate (after the forced ones)
    temperature: float = 0.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    rng: random.Random | None = None  # drawn from when sampling (None: a fresh, unseeded one)
    stop: frozenset[int] = frozenset()  # ids that end it; never returned nor fed
    stop_words: tuple[tuple[int, ...], ...] = ()  # word sequences that end it (2 words or more)
    stop_strings: tuple[str, ...] = ()  # strings that end it, matched on the generated text
    logit_bias: tuple[float, ...] | None = None  # added to the logits, by id
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # the top words to keep with each word (None: none)
    forced: tuple[int, ...] = ()  # words "chosen" first, as given: scores a prompt's words
    feed_last: bool = False  # feed the last word too (sessions: the words advance the state)
    # whether each word is simply the likeliest: the engine then picks it for the whole batch
    # with one argmax, and never makes a list of the row
    plain_greedy: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        plain = (
            self.temperature == 0
            and self.logprobs is None
            and self.logit_bias is None
            and not self.presence_penalty
            and not self.frequency_penalty
        )
        object.__setattr__(self, "plain_greedy", plain)

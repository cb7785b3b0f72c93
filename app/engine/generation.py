"""A generation's progress and result: the engine chooses its words, one per pass, by its
`SamplingParams`, and the caller reads them as they come and once it has ended."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from app.engine.params import SamplingParams
from app.engine.sampling import adjusted, sample, top_words

OnWord = Callable[[int, float], None]  # told each word as it comes (streams)


class Generation:
    """Words chosen so far (the forced ones first) and their probabilities, the top words of
    each when `logprobs` asks, and why it ended (`finish`: "stop" or "length"). A stop
    sequence found at the end is left out of the result (`generated`); a stop string cuts
    the text (`cut_text`)."""

    __slots__ = (
        "_counts",
        "_forced",
        "_future",
        "_itos",
        "_limit",
        "_plain",
        "_rng",
        "_text",
        "cut",
        "cut_text",
        "finish",
        "on_word",
        "params",
        "probs",
        "tops",
        "words",
    )

    def __init__(
        self,
        params: SamplingParams,
        itos: tuple[str, ...],
        on_word: OnWord | None,
        future: asyncio.Future[object],
    ):
        self.params = params
        self.on_word = on_word
        self.words: list[int] = []
        self.probs: list[float] = []
        self.tops: list[list[tuple[int, float]]] = []  # with logprobs only
        self.finish: str | None = None
        self.cut = 0  # words dropped from the end by a stop sequence
        self.cut_text: str | None = None  # the text up to a stop string, when one matched
        self._itos = itos
        self._rng = params.rng
        self._counts: dict[int, int] = {}  # generated words so far (with penalties only)
        self._text = ""  # the generated text so far (with stop strings only)
        self._forced = len(params.forced)
        self._limit = self._forced + params.max_words
        self._plain = params.plain_greedy
        if self._limit == 0:
            self.finish = "length"
        self._future = future  # the engine resolves it at the end

    # -- for the caller ----------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """Ended: finished, failed or cancelled."""
        return self._future.done()

    @property
    def error(self) -> BaseException | None:
        """Why it failed, once ended (None if it finished or was cancelled)."""
        future = self._future
        if not future.done() or future.cancelled():
            return None
        return future.exception()

    def cancel(self) -> None:
        """Stop it: the engine drops it before its next pass."""
        self._future.cancel()

    async def wait(self) -> None:
        """Until it ends; its error, if it failed."""
        await self._future

    def generated(self) -> tuple[list[int], list[float]]:
        """The generated words and their probabilities (a stop sequence left out)."""
        end = len(self.words) - self.cut
        return self.words[self._forced : end], self.probs[self._forced : end]

    def n_generated(self) -> int:
        return len(self.words) - self._forced - self.cut

    # -- for the engine ----------------------------------------------------------------------
    def scoring(self) -> bool:
        """Whether the next word is one of the forced ones (a prompt's, scored as given)."""
        return len(self.words) < self._forced

    def greedy(self) -> bool:
        """Whether the next word is the likeliest of the row, as it is: the engine then picks
        it for the whole batch at once, and `choose` is not called."""
        return self._plain and len(self.words) >= self._forced

    def choose(self, row: list[float]) -> int:
        p = self.params
        if len(self.words) < self._forced:  # scoring the given words: the next one
            if p.logprobs is not None:
                self.tops.append(top_words(row, p.logprobs))
            return p.forced[len(self.words)]
        if p.logprobs is not None:
            self.tops.append(top_words(row, p.logprobs))
        if p.logit_bias is not None or self._counts:
            row = adjusted(row, p.logit_bias, self._counts, p.presence_penalty, p.frequency_penalty)
        if p.temperature == 0:
            word = max(range(len(row)), key=row.__getitem__)
        else:
            if self._rng is None:
                self._rng = random.Random()
            word = sample(row, p.temperature, p.top_k, p.top_p, self._rng)
        if p.presence_penalty or p.frequency_penalty:
            self._counts[word] = self._counts.get(word, 0) + 1
        return word

    def take(self, word: int, prob: float) -> bool:
        """Add `word`, just chosen (and not a stop); whether the generation goes on (the word
        is fed then)."""
        self.words.append(word)
        self.probs.append(prob)
        if self.on_word is not None:
            self.on_word(word, prob)
        if len(self.words) == self._limit:
            self.finish = "length"
            return self.params.feed_last
        return True

    def stops(self, word: int) -> bool:
        """Whether `word`, just chosen, ends the generation (it is neither returned nor fed)."""
        if self._stops(word):
            self.finish = "stop"
            if self.params.logprobs is not None:
                self.tops.pop()  # the stop's
            return True
        return False

    def _stops(self, word: int) -> bool:
        n = len(self.words) - self._forced  # words generated so far
        if n < 0:
            return False
        p = self.params
        if word in p.stop:
            return True
        words = self.words
        for seq in p.stop_words:
            k = len(seq)
            if k - 1 <= n and seq[-1] == word and tuple(words[len(words) - k + 1 :]) == seq[:-1]:
                self.cut = k - 1
                return True
        if p.stop_strings:
            before = len(self._text)
            text = self._text + " " + self._itos[word]
            for s in p.stop_strings:
                at = text.find(s, max(0, before - len(s) + 1))
                if at >= 0:
                    self.cut_text = text[:at]
                    return True
            self._text = text
        return False

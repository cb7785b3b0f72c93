"""OpenAI's `logit_bias`, checked and summed: keys are token ids (ASCII digits, as OpenAI
takes them) or, beyond OpenAI, words of the vocabulary (any case, spaces around ignored)."""

from __future__ import annotations

from collections.abc import Mapping

from app.core.errors import InvalidRequest
from app.core.redact import clip, clip_number
from model_store import Vocab

MAX_BIAS = 100.0  # OpenAI's bound on each value, and on a token's sum
MAX_ID_DIGITS = 9  # a longer run of digits names no token of any vocabulary here


def logit_bias(vocab: Vocab, model: str, bias: Mapping[str, float] | None) -> list[float] | None:
    """The bias to add to each token id's logit; None when there is none. Keys that name the
    same token ("one", " One", "12", "012") add up, and the sum is clamped to +-MAX_BIAS."""
    if not bias:
        return None
    out = [0.0] * len(vocab)
    words = set(vocab.words)
    for key, value in bias.items():
        if not -MAX_BIAS <= value <= MAX_BIAS:
            raise InvalidRequest(
                f"logit_bias of {clip(key)} is {value}; it must be between -100 and 100",
                "logit_bias",
            )
        if key.isascii() and key.isdigit():
            i = int(key) if len(key) <= MAX_ID_DIGITS else len(vocab)
            if i >= len(vocab) or vocab.itos[i] not in words:
                raise InvalidRequest(
                    f"invalid key in logit_bias: token id {clip_number(key)} is not a word of "
                    f"model {model!r} (GET /v1/models/{model} lists its vocabulary by id)",
                    "logit_bias",
                )
        elif (word := key.strip().lower()) in words:
            i = vocab.stoi[word]
        else:
            raise InvalidRequest(
                f"invalid key in logit_bias: {clip(key)} is neither a token id (ASCII digits) "
                f"nor a word of model {model!r}",
                "logit_bias",
            )
        out[i] += value
    return [max(-MAX_BIAS, min(MAX_BIAS, b)) for b in out]

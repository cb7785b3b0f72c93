"""Signed, portable session states: what GET /v1/sessions/{id}/state gives and POST
/v1/sessions {state} takes back.

A document names the model version that made the state, the state's layout (as the engine
describes it), each part's raw bytes in base64, the session's counters, and a format version;
`signature` is HMAC-SHA256, keyed by STATE_SIGNING_KEY, of the canonical JSON of every other
field (keys sorted, no spaces, ASCII only), in hex. A document is checked in full before
anything is created: its format, its signature, then (as a second line, should a signed
document ever be wrong) its model, layout and every value, each refusal a 422 naming the
field at fault. The signature is the state's only guard: a state that fits the layout but was
made up could make the model answer anything, and an `ids` part out of range would fail the
engine's batched forward for every request in it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass

import torch
from pydantic import SecretStr

from app.core.errors import BadState, Gone, NotEnabled, UnknownModel
from app.core.redact import clip
from app.engine.registry import LoadedModel, ModelRegistry
from app.engine.sequences import ExportedState
from app.engine.slots import part_sizes
from app.schemas.sessions import SessionState, StateLayout
from app.serving.sessions import LAST_WORDS, Seed
from model_store import StateSpec

FORMAT = 1  # the document's format: a server reads its own only


def canonical(doc: SessionState) -> bytes:
    """What the signature covers: every field but the signature, as JSON with sorted keys,
    no spaces, ASCII only (so a client that re-serialises the document keeps it valid)."""
    fields = doc.model_dump(mode="json", exclude={"signature"})
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True, slots=True)
class StateSigner:
    """Makes documents with the first key and checks them with any (the others are older
    keys, kept while a rotation's documents matter); without a key both answer 501."""

    keys: tuple[SecretStr, ...] = ()

    def _keys(self) -> list[bytes]:
        if not self.keys:  # never unsigned: the routes are off rather than unguarded
            raise NotEnabled(
                "session state documents are off on this server: it has no STATE_SIGNING_KEY "
                "to sign and check them with (fork a session instead, or ask its operator)"
            )
        return [k.get_secret_value().encode() for k in self.keys]

    def sign(self, doc: SessionState) -> str:
        return hmac.new(self._keys()[0], canonical(doc), hashlib.sha256).hexdigest()

    def check_enabled(self) -> None:
        self._keys()

    def document(self, lm: LoadedModel, seed: Seed) -> SessionState:
        """The signed document of a session's state on `lm`."""
        saved, at, parts = seed.saved, 0, {}
        for name, size in part_sizes(lm.engine.spec).items():
            parts[name] = base64.b64encode(saved.data[at : at + size]).decode()
            at += size
        doc = SessionState(
            format=FORMAT,
            model=lm.name,
            version=lm.version,
            layout=StateLayout(dtype=saved.dtype, shape=saved.shape),
            parts=parts,
            tokens_seen=seed.tokens_seen,
            last_words=list(seed.last_words),
            signature="",
        )
        doc.signature = self.sign(doc)
        return doc

    def read(self, doc: SessionState, registry: ModelRegistry) -> tuple[LoadedModel, Seed]:
        """The model version and the state of a document, once every check passed; BadState
        (422) naming the first that failed."""
        keys = self._keys()
        if doc.format != FORMAT:
            raise BadState(
                f"state.format is {doc.format}: this server reads format {FORMAT} documents "
                "(take a new snapshot from a server of this version)"
            )
        signed = canonical(doc)
        given = doc.signature.encode()
        if not any(  # every key is tried (no early out: the time says nothing of which)
            [
                hmac.compare_digest(hmac.new(k, signed, hashlib.sha256).hexdigest().encode(), given)
                for k in keys
            ]
        ):
            raise BadState(
                "state.signature does not check: the document was changed after it was signed, "
                "or signed with a key this server does not hold (STATE_SIGNING_KEY or its "
                "fallbacks); nothing was created"
            )
        try:
            lm = registry.version(doc.model, doc.version)
        except (UnknownModel, Gone):
            raise BadState(
                f"state.model: {clip(doc.model)} version {doc.version} is not loaded on this "
                "server (GET /v1/models lists those that are): load it, or start a new session"
            ) from None
        dtype, shape = lm.engine.layout
        if (doc.layout.dtype, doc.layout.shape) != (dtype, shape):
            raise BadState(
                f"state.layout ({clip(doc.layout.shape)}) {clip(doc.layout.dtype)} does not fit "
                f"model {lm.key}, whose states are ({shape}) {dtype}"
            )
        spec = lm.engine.spec
        if set(doc.parts) != set(spec):
            raise BadState(
                f"state.parts names {sorted(doc.parts)[:8]}; model {lm.key}'s state has the "
                f"parts {list(spec)}"
            )
        raw = []
        for name, size in part_sizes(spec).items():
            data = decode_part(name, doc.parts[name])
            if len(data) != size:
                raise BadState(
                    f"state.parts.{name} holds {len(data)} bytes; model {lm.key} needs {size}"
                )
            check_values(name, spec[name], data, len(lm.vocab))
            raw.append(data)
        if any(w not in lm.vocab.stoi for w in doc.last_words):
            raise BadState(f"state.last_words holds a word that model {lm.key} does not know")
        saved = ExportedState(dtype, shape, b"".join(raw))
        return lm, Seed(saved, doc.tokens_seen, doc.last_words[-LAST_WORDS:])


def decode_part(name: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadState(f"state.parts.{name} is not base64") from None


def check_values(name: str, spec: StateSpec, data: bytes, vocab_size: int) -> None:
    """BadState unless a part's values could be a state of the model: floats finite, and a
    GRU's hidden state `h` (a mix of tanh outputs) in [-1, 1]; the copy path's `ids` token
    ids or -1 (an empty entry); its `seen` flag a true bool (0 or 1)."""
    if spec.dtype == torch.bool:
        if any(b > 1 for b in data):
            raise BadState(f"state.parts.{name} holds a value that is not a bool (0 or 1)")
        return
    values = torch.frombuffer(bytearray(data), dtype=spec.dtype)
    if spec.dtype.is_floating_point:
        if not bool(torch.isfinite(values).all()):
            raise BadState(f"state.parts.{name} holds a value that is not finite (NaN or inf)")
        if name == "h" and bool((values.abs() > 1).any()):
            raise BadState(
                f"state.parts.{name} holds a value out of [-1, 1], the range of a GRU's state"
            )
    elif bool(((values < -1) | (values >= vocab_size)).any()):
        raise BadState(f"state.parts.{name} holds a token id out of range (-1 to {vocab_size - 1})")

"""The checkpoint format: `<store>/<name>/<version>/{model.safetensors, meta.json}`.

Weights are safetensors (never a pickle); `meta.json` holds the variant, hyperparameters,
vocabulary, training recipe, per-epoch metrics and the sha256 of the weights file. Loading
checks all of it and raises BadCheckpoint naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_type_hints

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from model_store.models import VARIANTS, HumanNumbersLM, ModelConfig, build_model, count_parameters
from model_store.vocab import Vocab

WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
FORMAT_VERSION = 1
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
METRIC_KEYS = ("epoch", "train_loss", "valid_loss", "accuracy", "seconds")
MAX_META_BYTES = 16 << 20  # a meta.json is a few KB; past this it is not one


# meta.json's config is checked field by field, by the field's type in ModelConfig: every int
# there is a size (at least 1). `type(v) is` because JSON's true is not an integer here.
CONFIG_TYPES: dict[str, type] = get_type_hints(ModelConfig)
CONFIG_CHECKS: dict[type, tuple[Callable[[object], bool], str]] = {
    int: (lambda v: type(v) is int and v >= 1, "a positive integer"),
    bool: (lambda v: type(v) is bool, "true or false"),
    str: (lambda v: type(v) is str, "a string"),
}
assert set(CONFIG_TYPES.values()) <= set(CONFIG_CHECKS), "a ModelConfig field type goes unchecked"


class BadCheckpoint(Exception):
    """A checkpoint that must not be loaded: the message names the file and what is wrong."""

    def __init__(self, path: Path, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class CheckpointRef:
    """Where one checkpoint version lives."""

    name: str
    version: int
    path: Path


@dataclass
class Checkpoint:
    """A loaded, verified checkpoint."""

    ref: CheckpointRef
    meta: dict[str, Any]
    config: ModelConfig
    vocab: Vocab
    model: HumanNumbersLM

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def sha256(self) -> str:
        return str(self.meta["sha256"])

    @property
    def metrics(self) -> list[dict[str, float]]:
        return list(self.meta["metrics"])

    @property
    def valid_accuracy(self) -> float | None:
        return float(self.metrics[-1]["accuracy"]) if self.metrics else None


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(
            f"bad checkpoint name {name!r}: use 1-64 lower-case letters, digits, '.', '_' or '-'"
        )
    return name


def _versions(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def list_checkpoints(store: Path | str, all_versions: bool = False) -> list[CheckpointRef]:
    """Checkpoints in a store, by name; only the latest version of each unless all_versions."""
    store = Path(store)
    if not store.is_dir():
        return []
    refs = []
    for folder in sorted(p for p in store.iterdir() if p.is_dir() and NAME_RE.match(p.name)):
        versions = _versions(folder)
        for v in versions if all_versions else versions[-1:]:
            refs.append(CheckpointRef(folder.name, v, folder / str(v)))
    return refs


def find_checkpoint(store: Path | str, name: str, version: int | None = None) -> CheckpointRef:
    """The checkpoint `name` (its latest version unless one is given); FileNotFoundError if none."""
    folder = Path(store) / check_name(name)
    versions = _versions(folder)
    if not versions:
        raise FileNotFoundError(f"no checkpoint named {name!r} in {store}")
    if version is None:
        version = versions[-1]
    elif version not in versions:
        raise FileNotFoundError(f"checkpoint {name!r} has no version {version} in {store}")
    return CheckpointRef(name, version, folder / str(version))


def save_checkpoint(
    store: Path | str,
    name: str,
    model: HumanNumbersLM,
    vocab: Vocab,
    *,
    metrics: list[dict[str, float]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> CheckpointRef:
    """Write a new version of checkpoint `name` and return where it went.

    The folder is written under a temporary name and renamed into place, so a reader never
    sees half a checkpoint and two writers never share a version.
    """
    check_name(name)
    assert len(vocab) == model.config.vocab_size, "vocabulary and model disagree on its size"
    folder = Path(store) / name
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{secrets.token_hex(8)}"
    tmp.mkdir()
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        weights = save_safetensors(tensors, metadata={"format": "pt"})
        (tmp / WEIGHTS_FILE).write_bytes(weights)
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "variant": model.config.variant,
            "version": 0,  # set below, once the version is known
            "config": model.config.to_dict(),
            "parameters": count_parameters(model),
            "vocab": list(vocab.itos),
            "metrics": list(metrics or []),
            "torch_version": torch.__version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "sha256": hashlib.sha256(weights).hexdigest(),
            **dict(extra or {}),
        }
        while True:
            version = (_versions(folder) or [0])[-1] + 1
            meta["version"] = version
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            try:
                os.rename(tmp, folder / str(version))
            except OSError:
                if (folder / str(version)).exists():
                    continue  # another writer took this version: take the next
                raise
            return CheckpointRef(name, version, folder / str(version))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _require(meta: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    if key not in meta:
        raise BadCheckpoint(path, f"missing field {key!r}")
    value = meta[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadCheckpoint(path, f"field {key!r} has the wrong type ({type(value).__name__})")
    return value


def read_meta(ref_or_path: CheckpointRef | Path) -> dict[str, Any]:
    """meta.json of a checkpoint folder, checked for the fields every checkpoint has."""
    folder = ref_or_path.path if isinstance(ref_or_path, CheckpointRef) else ref_or_path
    path = folder / META_FILE
    try:
        size = path.stat().st_size
        if size > MAX_META_BYTES:
            raise BadCheckpoint(path, f"file is {size:,} bytes; a meta.json is a few KB")
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadCheckpoint(path, "file is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadCheckpoint(path, f"not valid JSON ({e})") from None
    except RecursionError:
        raise BadCheckpoint(path, "not valid JSON (nested too deeply)") from None
    if not isinstance(meta, dict):
        raise BadCheckpoint(path, "not a JSON object")
    for key in ("name", "variant", "sha256"):
        _require(meta, key, str, path)
    _require(meta, "version", int, path)
    if meta["variant"] not in VARIANTS:
        raise BadCheckpoint(path, f"unknown variant {meta['variant']!r}")
    vocab = _require(meta, "vocab", list, path)
    if not vocab or not all(isinstance(t, str) for t in vocab):
        raise BadCheckpoint(path, "field 'vocab' must be a non-empty list of strings")
    metrics = _require(meta, "metrics", list, path)
    for i, row in enumerate(metrics):
        if not isinstance(row, dict) or any(
            not isinstance(row.get(k), int | float) for k in METRIC_KEYS
        ):
            raise BadCheckpoint(path, f"metrics[{i}] must have numbers {', '.join(METRIC_KEYS)}")
    return meta


def _config_from_meta(meta: Mapping[str, Any], path: Path) -> ModelConfig:
    raw = _require(meta, "config", dict, path)
    unknown = set(raw) - set(CONFIG_TYPES)
    if unknown:
        raise BadCheckpoint(path, f"unknown config fields {sorted(unknown)}")
    for key, value in raw.items():
        holds, what = CONFIG_CHECKS[CONFIG_TYPES[key]]
        if not holds(value):
            raise BadCheckpoint(path, f"config field {key!r} must be {what}")
    config = ModelConfig(**raw)
    if config.variant != meta["variant"]:
        raise BadCheckpoint(path, f"config variant {config.variant!r} != {meta['variant']!r}")
    if config.vocab_size != len(meta["vocab"]):
        raise BadCheckpoint(
            path, f"vocab has {len(meta['vocab'])} tokens, config says {config.vocab_size}"
        )
    return config


def load_checkpoint(ref: CheckpointRef | Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Load and verify a checkpoint; the model comes back in eval mode on `device`."""
    if isinstance(ref, Path):
        ref = CheckpointRef(ref.parent.name, int(ref.name) if ref.name.isdigit() else 0, ref)
    meta = read_meta(ref)
    meta_path = ref.path / META_FILE
    config = _config_from_meta(meta, meta_path)
    try:
        vocab = Vocab(tuple(meta["vocab"]))
    except ValueError as e:
        raise BadCheckpoint(meta_path, str(e)) from None

    weights_path = ref.path / WEIGHTS_FILE
    try:
        data = weights_path.read_bytes()
    except FileNotFoundError:
        raise BadCheckpoint(weights_path, "file is missing") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta["sha256"]:
        raise BadCheckpoint(
            weights_path,
            f"sha256 is {digest}, meta.json says {meta['sha256']}: the file is corrupt or altered",
        )
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError) as e:
        raise BadCheckpoint(weights_path, f"not a valid safetensors file ({e})") from None

    # the shapes meta.json's config makes, on no device: a config of absurd sizes is refused
    # by comparing shapes, before any memory is spent on it
    with torch.device("meta"):
        expected = build_model(config).state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise BadCheckpoint(
            weights_path,
            f"tensors do not match variant {config.variant!r}: "
            f"missing {missing or 'none'}, unexpected {unexpected or 'none'}",
        )
    for key, want in expected.items():
        got = tensors[key]
        if got.shape != want.shape:
            raise BadCheckpoint(
                weights_path,
                f"tensor {key!r} has shape {tuple(got.shape)}, expected {tuple(want.shape)}",
            )
        if got.dtype != want.dtype:
            raise BadCheckpoint(
                weights_path, f"tensor {key!r} has dtype {got.dtype}, expected {want.dtype}"
            )
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise BadCheckpoint(
                weights_path, f"tensor {key!r} holds non-finite values (NaN or infinity)"
            )
    model = build_model(config)
    model.load_state_dict(tensors, strict=True)
    model.to(device).eval()
    return Checkpoint(ref=ref, meta=meta, config=config, vocab=vocab, model=model)

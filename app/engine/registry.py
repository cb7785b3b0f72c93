"""The loaded models: every usable checkpoint of the store, on the chosen device."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from app.core.redact import short_digests
from app.engine.engine import Engine, EngineConfig
from model_store import (
    PREFERRED_DEFAULTS,
    BadCheckpoint,
    Checkpoint,
    Vocab,
    compile_cell,
    count_parameters,
    list_checkpoints,
    load_checkpoint,
    resolve_device,
)

log = logging.getLogger("app.models")


@dataclass
class LoadedModel:
    checkpoint: Checkpoint
    device: torch.device
    engine: Engine

    @property
    def name(self) -> str:
        return self.checkpoint.name

    @property
    def vocab(self) -> Vocab:
        return self.checkpoint.vocab

    @property
    def parameters(self) -> int:
        return count_parameters(self.checkpoint.model)


class NoUsableModel(RuntimeError):
    pass


@dataclass
class ModelRegistry:
    models: dict[str, LoadedModel]
    default: str
    problems: list[str] = field(default_factory=list)  # checkpoints refused, and why

    @classmethod
    def load(
        cls,
        store: Path,
        device_name: str,
        default: str | None,
        engine_config: EngineConfig,
        cell_mode: str = "eager",
    ) -> ModelRegistry:
        """Load the latest version of every checkpoint; skip bad ones, saying which and why."""
        try:
            device = resolve_device(device_name)
        except ValueError as e:
            raise NoUsableModel(f"DEVICE={device_name}: {e}") from None
        models, problems = {}, []
        for ref in list_checkpoints(store):
            try:
                ckpt = load_checkpoint(ref, device)
                compile_cell(ckpt.model, cell_mode)
            except BadCheckpoint as e:
                # /ready shows these publicly: the store-relative name, digests cut short
                where = e.path.relative_to(store) if e.path.is_relative_to(store) else e.path.name
                problems.append(f"{where}: {short_digests(e.problem)}")
                log.error("skipping checkpoint %s", e)
                continue
            except (RuntimeError, MemoryError, OSError, ValueError, RecursionError) as e:
                # what the checks did not foresee still costs this checkpoint alone
                where = ref.path.relative_to(store) if ref.path.is_relative_to(store) else ref.path
                problems.append(f"{where}: could not be loaded ({type(e).__name__})")
                log.error("skipping checkpoint %s: %s: %s", ref.path, type(e).__name__, e)
                continue
            models[ref.name] = LoadedModel(
                ckpt,
                device,
                Engine(ckpt.model, ckpt.vocab, device, engine_config, name=ref.name),
            )
            log.info("loaded %s v%d (%s) on %s", ref.name, ref.version, ckpt.config.variant, device)
        if not models:
            why = "; ".join(problems) if problems else "it holds no checkpoints"
            raise NoUsableModel(
                f"no usable checkpoint in {store}: {why}. "
                f"Train some with: python -m training train-all --store {store}"
            )
        if default is None:
            default = next((n for n in PREFERRED_DEFAULTS if n in models), sorted(models)[0])
        elif default not in models:
            raise NoUsableModel(
                f"DEFAULT_MODEL={default!r} is not among the loaded models: {', '.join(models)}"
            )
        return cls(models, default, problems)

    def get(self, name: str | None) -> LoadedModel | None:
        return self.models.get(name or self.default)

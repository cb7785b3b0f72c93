"""What a trained model is: vocabulary, architectures and the checkpoint format."""

from model_store.checkpoint import (
    BadCheckpoint,
    Checkpoint,
    CheckpointRef,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from model_store.inference import compile_cell, next_probs, resolve_device, start_state
from model_store.models import (
    PREFERRED_DEFAULTS,
    SEED_VARIANTS,
    VARIANTS,
    HumanNumbersLM,
    ModelConfig,
    State,
    StateSpec,
    Variant,
    build_model,
    count_parameters,
)
from model_store.vocab import BOS, UnknownWord, Vocab, split_words, token_ends

__all__ = [
    "BOS",
    "PREFERRED_DEFAULTS",
    "SEED_VARIANTS",
    "VARIANTS",
    "BadCheckpoint",
    "Checkpoint",
    "CheckpointRef",
    "HumanNumbersLM",
    "ModelConfig",
    "State",
    "StateSpec",
    "UnknownWord",
    "Variant",
    "Vocab",
    "build_model",
    "compile_cell",
    "count_parameters",
    "find_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "next_probs",
    "read_meta",
    "resolve_device",
    "save_checkpoint",
    "split_words",
    "start_state",
    "token_ends",
]

import hashlib
import json
import time

import pytest
import torch
from safetensors.torch import save_file

from model_store import (
    VARIANTS,
    BadCheckpoint,
    ModelConfig,
    build_model,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from model_store.checkpoint import MAX_META_BYTES


def sha256_file(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


METRICS = [{"epoch": 1, "train_loss": 2.0, "valid_loss": 2.1, "accuracy": 0.5, "seconds": 1.0}]


@pytest.fixture
def saved(tmp_path, data):
    torch.manual_seed(0)
    model = build_model(ModelConfig("gru-custom")).eval()
    ref = save_checkpoint(tmp_path, "custom", model, data.vocab, metrics=METRICS)
    return tmp_path, ref, model


def rewrite_meta(ref, **changes):
    path = ref.path / "meta.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("variant", [*VARIANTS, "copy-value"])
def test_round_trip(tmp_path, data, variant):
    torch.manual_seed(0)
    if variant == "copy-value":  # gru-copy whose head reads the offered word (the recipe's)
        variant = "gru-copy"
        model = build_model(ModelConfig(variant, copy_value=True)).eval()
    else:
        model = build_model(ModelConfig(variant)).eval()
    ref = save_checkpoint(tmp_path, variant, model, data.vocab, metrics=METRICS)
    assert ref.path == tmp_path / variant / "1"
    assert sorted(p.name for p in ref.path.iterdir()) == ["meta.json", "model.safetensors"]
    ckpt = load_checkpoint(ref)
    x = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(ckpt.model(x)[0], model(x)[0], rtol=0, atol=0)
    assert not ckpt.model.training and ckpt.model.config == model.config
    assert ckpt.vocab == data.vocab
    assert ckpt.metrics == METRICS and ckpt.valid_accuracy == 0.5
    meta = read_meta(ref)
    for key in ("name", "variant", "version", "sha256", "vocab", "metrics", "config", "created"):
        assert key in meta
    assert meta["sha256"] == sha256_file(ref.path / "model.safetensors")
    assert (meta["name"], meta["variant"], meta["version"]) == (variant, variant, 1)


def test_versions_and_latest(saved, data):
    store, ref, model = saved
    ref2 = save_checkpoint(store, "custom", model, data.vocab)
    assert ref2.version == 2
    assert find_checkpoint(store, "custom") == ref2
    assert find_checkpoint(store, "custom", 1) == ref
    assert list_checkpoints(store) == [ref2]
    assert list_checkpoints(store, all_versions=True) == [ref, ref2]
    assert not any(p.name.startswith(".tmp") for p in (store / "custom").iterdir())
    with pytest.raises(FileNotFoundError, match="no version 7"):
        find_checkpoint(store, "custom", 7)
    with pytest.raises(FileNotFoundError, match="no checkpoint named 'other'"):
        find_checkpoint(store, "other")


@pytest.mark.parametrize("name", ["", "../evil", "Upper", "a/b", "x" * 65])
def test_bad_names_are_refused(tmp_path, data, name):
    with pytest.raises(ValueError, match="bad checkpoint name"):
        save_checkpoint(tmp_path, name, build_model(ModelConfig()), data.vocab)


def refuse(ref, file, problem):
    with pytest.raises(BadCheckpoint, match=problem) as e:
        load_checkpoint(ref)
    assert e.value.path == ref.path / file
    assert str(ref.path / file) in str(e.value)


def test_tampered_weights(saved):
    _, ref, _ = saved
    path = ref.path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    refuse(ref, "model.safetensors", "sha256 is .* meta.json says")


def test_truncated_weights(saved):
    _, ref, _ = saved
    path = ref.path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    refuse(ref, "model.safetensors", "corrupt or altered")


def test_truncated_weights_with_a_matching_sha_are_still_refused(saved):
    _, ref, _ = saved
    path = ref.path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    rewrite_meta(ref, sha256=sha256_file(path))
    refuse(ref, "model.safetensors", "not a valid safetensors file")


def test_missing_weights(saved):
    _, ref, _ = saved
    (ref.path / "model.safetensors").unlink()
    refuse(ref, "model.safetensors", "file is missing")


def test_missing_meta(saved):
    _, ref, _ = saved
    (ref.path / "meta.json").unlink()
    refuse(ref, "meta.json", "file is missing")


def test_meta_not_json(saved):
    _, ref, _ = saved
    (ref.path / "meta.json").write_text("{not json")
    refuse(ref, "meta.json", "not valid JSON")


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"sha256": None}, "field 'sha256' has the wrong type"),
        ({"variant": "lstm"}, "unknown variant 'lstm'"),
        ({"vocab": ["a", "a"]}, "vocab has 2 tokens, config says 40"),
        ({"metrics": [{"epoch": 1}]}, r"metrics\[0\] must have numbers"),
        ({"config": {"variant": "gru-custom", "hidden": -3}}, "'hidden' must be a positive"),
        ({"config": {"variant": "gru-custom", "evil": 1}}, "unknown config fields"),
        ({"config": {"variant": "gru-custom", "copy_value": "yes"}}, "'copy_value' must be true"),
        ({"config": {"variant": "gru-custom", "copy_start": 1}}, "'copy_start' must be true or"),
        ({"config": {"variant": "gru-custom", "vocab_size": True}}, "'vocab_size' must be a posi"),
        ({"config": {"variant": "gru-custom", "key_size": 1.5}}, "'key_size' must be a positive"),
        ({"config": {"variant": 7}}, "config field 'variant' must be a string"),
        ({"variant": "gru"}, "config variant 'gru-custom' != 'gru'"),
    ],
)
def test_bad_meta_fields(saved, changes, problem):
    _, ref, _ = saved
    rewrite_meta(ref, **changes)
    refuse(ref, "meta.json", problem)


def test_missing_meta_field(saved):
    _, ref, _ = saved
    path = ref.path / "meta.json"
    meta = json.loads(path.read_text())
    del meta["vocab"]
    path.write_text(json.dumps(meta))
    refuse(ref, "meta.json", "missing field 'vocab'")


def test_weights_of_another_shape(saved):
    """meta says nh 56; the weights are of an nh 32 model, with a correct sha256."""
    _, ref, _ = saved
    other = build_model(ModelConfig("gru-custom", hidden=32))
    path = ref.path / "model.safetensors"
    save_file(other.state_dict(), str(path))
    rewrite_meta(ref, sha256=sha256_file(path))
    refuse(
        ref, "model.safetensors", r"tensor 'i_h.weight' has shape \(40, 32\), expected \(40, 56\)"
    )


def test_weights_of_another_variant(saved):
    _, ref, _ = saved
    other = build_model(ModelConfig("gru"))
    path = ref.path / "model.safetensors"
    save_file(other.state_dict(), str(path))
    rewrite_meta(ref, sha256=sha256_file(path))
    refuse(ref, "model.safetensors", "tensors do not match variant 'gru-custom'")


def test_weights_of_another_dtype(saved):
    _, ref, model = saved
    path = ref.path / "model.safetensors"
    state = {k: (v.double() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    save_file(state, str(path))
    rewrite_meta(ref, sha256=sha256_file(path))
    refuse(ref, "model.safetensors", "has dtype torch.float64, expected torch.float32")


def test_a_pickle_is_never_loaded(saved, tmp_path):
    """A torch.save pickle in place of the weights is refused as not safetensors, unexecuted."""
    _, ref, model = saved
    path = ref.path / "model.safetensors"
    torch.save(model.state_dict(), path)
    rewrite_meta(ref, sha256=sha256_file(path))
    refuse(ref, "model.safetensors", "not a valid safetensors file")


def test_list_of_an_absent_store_is_empty(tmp_path):
    assert list_checkpoints(tmp_path / "nothing") == []


# -- checkpoints made to hurt the loader (issue 17, row 11) -----------------------------------
def test_absurd_sizes_are_refused_before_any_memory_is_spent(saved):
    _, ref, _ = saved
    meta = json.loads((ref.path / "meta.json").read_text())
    rewrite_meta(ref, config={**meta["config"], "hidden": 200_000})
    started = time.monotonic()
    expected = r"tensor 'i_h.weight' has shape \(40, 56\), expected \(40, 200000\)"
    refuse(ref, "model.safetensors", expected)
    assert time.monotonic() - started < 5


def test_deeply_nested_meta_is_refused(saved):
    _, ref, _ = saved
    (ref.path / "meta.json").write_text("[" * 200_000 + "]" * 200_000)
    refuse(ref, "meta.json", "nested too deeply")


def test_a_huge_meta_is_refused_unread(saved):
    _, ref, _ = saved
    with open(ref.path / "meta.json", "wb") as f:
        f.truncate(MAX_META_BYTES + 1)  # sparse: no disk spent
    refuse(ref, "meta.json", "a meta.json is a few KB")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_though_the_sha_matches(tmp_path, data, bad):
    model = build_model(ModelConfig("gru"))
    with torch.no_grad():
        model.h_o.weight.fill_(bad)
    ref = save_checkpoint(tmp_path, "nan", model, data.vocab, metrics=METRICS)
    refuse(ref, "model.safetensors", "tensor 'h_o.weight' holds non-finite values")

import json
import shutil
from dataclasses import replace

import pytest
import torch

from model_store import SEED_VARIANTS, VARIANTS, ModelConfig
from training.cli import build_parser, main, recipe_flags
from training.loop import RECIPES, TrainConfig, table_header, train

FEW = TrainConfig(ModelConfig("gru"), epochs=2, max_steps=4, bs=16, bptt=10)


# The lesson's recipe, as meta.json's "recipe" holds it (the seed, device and steps aside).
SEED_RECIPE = {
    "epochs": 10,
    "lr": 0.01,
    "bs": 64,
    "bptt": 40,
    "hidden": 56,
    "n_layers": 1,
    "copy_window": 16,
    "key_size": 16,
    "copy_value": False,
    "copy_start": False,
    "copy_lookahead": False,
    "wd": 0.01,
    "reset": 0.0,
    "restart_begin": 0.0,
    "restart_carry": 0.0,
    "restart_numbers": False,
    "restart_bos": False,
    "seed": 42,
    "device": "auto",
    "max_steps": None,
}


def test_every_variant_has_its_recipe():
    """The seed variants train with the lesson's recipe, gru-copy with its own: the same
    figures, in the same keys, as every checkpoint's meta.json has held."""
    assert list(RECIPES) == list(VARIANTS)
    for name in SEED_VARIANTS:
        assert RECIPES[name].to_dict() == {"variant": name, **SEED_RECIPE}
    copy = {"hidden": 96, "copy_value": True, "wd": 0.1, "reset": 0.15, "restart_begin": 0.1}
    copy |= {"epochs": 40, "restart_numbers": True, "restart_bos": True, "copy_lookahead": True}
    copy |= {"restart_carry": 0.1}
    assert RECIPES["gru-copy"].to_dict() == {"variant": "gru-copy", **SEED_RECIPE, **copy}


def test_flags_override_the_model_and_the_training_fields():
    flags = ["--hidden", "32", "--layers", "2", "--no-copy-value", "--epochs", "3", "--wd", "0.5"]
    args = build_parser().parse_args(["train", "--variant", "gru-copy", *flags])
    config = RECIPES["gru-copy"].updated(**recipe_flags(args))
    assert config.model == replace(
        RECIPES["gru-copy"].model, hidden=32, n_layers=2, copy_value=False
    )
    assert (config.epochs, config.wd, config.reset) == (3, 0.5, 0.15)  # the rest: the recipe's
    assert config.to_dict()["hidden"] == 32 and "vocab_size" not in config.to_dict()


def test_few_steps_learn_something(data):
    lines = []
    result = train(FEW, data, progress=False, log=lines.append)
    assert lines[0] == table_header()
    assert lines[0].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    assert len(lines) == 3 and lines[2].startswith("2 ")
    first, last = result.metrics
    assert [m["epoch"] for m in result.metrics] == [1, 2]
    assert set(first) == {"epoch", "train_loss", "valid_loss", "accuracy", "seconds"}
    assert last["valid_loss"] < first["valid_loss"] < 3.9  # ln(40) = 3.69 is chance
    assert not result.model.training


def test_training_is_seeded(data):
    a = train(FEW, data, progress=False, log=lambda _: None)
    b = train(FEW, data, progress=False, log=lambda _: None)
    for (ka, va), (kb, vb) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)
    assert [m["valid_loss"] for m in a.metrics] == [m["valid_loss"] for m in b.metrics]


def test_cli_train_and_report(tmp_path, capsys):
    store = tmp_path / "store"
    args = ["--store", str(store), "--epochs", "1", "--max-steps", "2", "--no-progress"]
    assert main(["train", "--variant", "gru-custom", "--name", "tiny", *args]) == 0
    assert main(["train-all", *args]) == 0
    out = capsys.readouterr().out
    assert "epoch       train_loss  valid_loss  accuracy    time" in out
    assert f"wrote {store / 'tiny' / '1'}" in out
    names = sorted(p.name for p in store.iterdir())
    assert names == sorted([*VARIANTS, "tiny"])  # train-all trains every variant
    copy_meta = json.loads((store / "gru-copy" / "1" / "meta.json").read_text())
    assert copy_meta["config"]["copy_window"] == RECIPES["gru-copy"].model.copy_window
    assert copy_meta["recipe"]["epochs"] == 1  # the flag overrides the variant's recipe
    assert copy_meta["recipe"]["hidden"] == RECIPES["gru-copy"].model.hidden  # the rest is its own

    # --missing (make run's): only what has no checkpoint, so a stopped first run finishes
    shutil.rmtree(store / "gru-cell")
    capsys.readouterr()
    assert main(["train-all", "--missing", *args]) == 0
    out = capsys.readouterr().out
    assert out.count("training ") == 1 and "training gru-cell ->" in out
    assert "not trained again: gru, gru-custom, gru-copy" in out
    assert sorted(p.name for p in (store / "gru").iterdir()) == ["1"]  # not a version 2
    assert main(["train-all", "--missing", *args]) == 0
    assert "nothing to train" in capsys.readouterr().out

    assert main(["report", "--store", str(store), "--out", str(tmp_path / "acc.png")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == [
        "name",
        "variant",
        "version",
        "params",
        "epochs",
        "accuracy",
        "s/epoch",
        "after",
        ",",
        "thousand",
        "1",
        "stream",
    ]
    assert "gru-cell" in out and "tiny" in out and "23,784" in out
    row = next(line for line in out.splitlines() if line.startswith("gru-copy"))
    assert all(0 <= float(v) <= 1 for v in row.split()[-3:])  # evaluated, not "-"
    assert (tmp_path / "acc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reports_bad_input(tmp_path, capsys):
    assert main(["report", "--store", str(tmp_path)]) == 1
    assert "no checkpoints" in capsys.readouterr().err
    assert (
        main(["train", "--variant", "gru", "--store", str(tmp_path), "--data", str(tmp_path)]) == 2
    )
    assert "train.txt" in capsys.readouterr().err


def test_cli_threads(tmp_path, capsys):
    before = torch.get_num_threads()
    args = ["train", "--variant", "gru", "--store", str(tmp_path), "--epochs", "1"]
    try:
        assert main([*args, "--max-steps", "1", "--no-progress", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        main([*args, "--threads", "0"])
    assert "must be a positive integer, got 0" in capsys.readouterr().err


def test_cli_data(tmp_path):
    assert main(["data", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "train.txt").read_text().startswith("one \ntwo \n")


def test_gru_copy_learns_to_copy_on_a_short_schedule(data):
    """Four epochs of the recipe (seconds on a CPU): the copy path already gets the first word
    of a number in 8,001..9,999 right (a thousands word never seen as one in training) where
    the seed models get a quarter. Measured (the eleventh round's recipe, 1 thread), seeds 0
    and 1: accuracy 0.961 and 0.974, after "," 0.968 and 0.969, on "thousand" 0.967 and 0.967,
    one stream 0.985 and 0.997."""
    from training.evaluation import breakdown

    config = replace(RECIPES["gru-copy"], epochs=4, device="cpu", seed=0)
    result = train(config, data, progress=False, log=lambda _: None)
    b = breakdown(result.model, data.vocab, data.ids("valid"))
    assert b.after_comma >= 0.9, b
    assert b.thousand >= 0.9, b
    assert b.accuracy >= 0.93, b
    assert b.one_stream >= 0.95, b
    # Counting from anywhere (issue 16). Four epochs of this recipe (the eleventh round's),
    # seeds 0 and 1, 1 thread: 1..99 1.00 and 1.00, the session from `one,` 7 and 6 numbers
    # right, 100..999 0.98 and 1.00; the same four epochs without the
    # restarts at numbers (an older recipe): 0.85 and 0.92, 0 numbers, and its full
    # 40-epoch checkpoint 0.85-0.88 and 0 (19 with an xxbos typed first).
    from training.evaluation import counting_report

    counting = counting_report(result.model, data.vocab)
    assert counting["1..99"] >= 0.97, counting
    assert counting["from 1 (of 120)"] >= 3, counting
    assert min(counting[r] for r in ("100..999", "1,000..7,999")) >= 0.9, counting
    # 8,000..9,999 after four epochs, seeds 0-3 (1 and 2 threads alike): 0.92, 0.97, 0.93,
    # 1.00. Another CPU's rounding moves a short schedule as a seed does, so the floor leaves
    # room below seed 0's 55 of 60; the 40-epoch checkpoint gets 1.000 (docs/benchmarks.md).
    assert counting["8,000..9,999"] >= 0.85, counting


def test_restart_rows_zeroes_only_the_chosen_rows():
    from model_store import ModelConfig, build_model
    from training.loop import restart_rows

    model = build_model(ModelConfig("gru-copy", hidden=16, copy_window=4, key_size=4)).eval()
    with torch.no_grad():
        _, state = model(torch.randint(0, 40, (3, 9)))
    rows = torch.tensor([False, True, False])
    out = restart_rows(model, state, rows)
    zero = model.init_state(1)
    for name, part in out.items():
        assert torch.equal(part[1], zero[name][0]), name  # ids -1, seen False, the rest 0
        assert torch.equal(part[0], state[name][0]) and torch.equal(part[2], state[name][2])
    assert out["ids"][1].eq(-1).all() and not bool(state["ids"][1].eq(-1).all())


def test_no_progress_bar_where_stderr_is_no_terminal(tmp_path):
    """make run's log and docker compose logs: one table line an epoch, no carriage-return
    updates of a bar (tqdm draws one on a terminal only)."""
    import subprocess
    import sys

    args = ["--store", str(tmp_path), "--epochs", "2", "--max-steps", "3", "--threads", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "training", "train", "--variant", "gru", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "\r" not in done.stderr and "\r" not in done.stdout, done.stderr[-300:]
    rows = [line for line in done.stdout.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert len(rows) == 2, done.stdout


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--reset", "1.5"], "must be a share between 0 and 1, got 1.5"),
        (["--restart-begin", "-0.1"], "must be a share between 0 and 1, got -0.1"),
        (["--restart-carry", "nan"], "must be a share between 0 and 1, got nan"),
        (["--restart-begin", "0.7", "--restart-carry", "0.6"], "at most 1 together"),
    ],
)
def test_restart_shares_are_checked(tmp_path, capsys, flags, says):
    args = ["train", "--variant", "gru-copy", "--store", str(tmp_path), *flags]
    try:
        code = main(args)
    except SystemExit as e:  # argparse refuses a bad value with exit status 2
        code = e.code
    assert code == 2
    assert says in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written

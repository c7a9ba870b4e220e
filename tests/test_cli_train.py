"""`carmask train` with the habits of the other verbs: the run folder checked
before any work, data problems as sentences, skipped photos named (exit 1),
epochs on stderr, bars only on a terminal, -q."""

import io
import os
import shutil
import sys
from pathlib import Path

import pytest
from helpers import run_cli

from carmask.synth import make_dataset

# The seed CNN, small and quick: 1 epoch on 32x32 crops of a 96x64 frame.
QUICK = ("--epochs", "1", "--size", "32x32", "--frame", "96x64", "--batch-size", "8", "--device", "cpu")


@pytest.fixture(scope="module")
def data(small_cars):
    """Three small synthetic cars with masks (16 views, 96x64)."""
    return small_cars(3, seed=6)


@pytest.fixture
def no_training(monkeypatch):
    """`carmask train` up to the training, which then does nothing; the run
    folder's files as the training would have found them."""
    seen = []

    def fake_train(data_dir, run_dir, config, **kwargs):
        seen.append(sorted(p.name for p in Path(run_dir).iterdir()) if Path(run_dir).is_dir() else None)
        return Path(run_dir) / "best.pt"

    monkeypatch.setattr("carmask.train.train", fake_train)
    return seen


@pytest.mark.parametrize(
    "where, says",
    [
        ("file", "{tmp}/file is a file, not a folder"),
        ("file/run", "cannot write {tmp}/file/run: {tmp}/file is not a folder"),
        pytest.param(
            "/sys/carmask-run",
            "cannot write in /sys",
            marks=pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs a read-only /sys"),
        ),
    ],
)
def test_a_run_folder_that_cannot_be_made_is_a_sentence(data, tmp_path, no_training, where, says):
    (tmp_path / "file").write_text("")
    result = run_cli("train", data, "-o", tmp_path / where, *QUICK)
    assert result.exit_code == 2, result.output
    assert says.format(tmp=tmp_path) in result.stderr and "Traceback" not in result.output
    assert no_training == []


def test_an_earlier_run_is_kept_unless_resumed_or_overwritten(data, tmp_path, no_training):
    run = tmp_path / "run"
    (run / "cache").mkdir(parents=True)
    for name in ("best.pt", "metrics.csv"):
        (run / name).write_text("an earlier run's")
    refused = run_cli("train", data, "-o", run, *QUICK)
    assert refused.exit_code == 2
    assert f"{run} holds an earlier run (best.pt, metrics.csv); pass --resume" in refused.stderr
    assert no_training == [] and (run / "best.pt").read_text() == "an earlier run's"
    assert run_cli("train", data, "-o", run, *QUICK, "--resume").exit_code == 0
    assert run_cli("train", data, "-o", run, *QUICK, "--overwrite").exit_code == 0
    assert no_training == [["best.pt", "cache", "metrics.csv"], ["cache"]]  # the cache is kept
    assert run_cli("train", data, "-o", run, *QUICK, "--overwrite", "--resume").exit_code == 2


@pytest.mark.parametrize(
    "option, value",
    [
        ("--batch-size", "0"),
        ("--max-minutes", "-1"),
        ("--epochs", "0"),
        ("--val-fraction", "1"),
        ("--lr", "0"),
        ("--width", "0"),
    ],
)
def test_numbers_out_of_range_are_usage_errors(data, tmp_path, no_training, option, value):
    """--batch-size 0 was a ZeroDivisionError traceback, --max-minutes -1 no budget at all."""
    result = run_cli("train", data, "-o", tmp_path / "run", *QUICK, option, value)
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output
    assert no_training == []


def test_resume_with_nothing_to_resume_says_it_trains_afresh(data, tmp_path, no_training):
    result = run_cli("train", data, "-o", tmp_path / "run", *QUICK, "--resume")
    assert result.exit_code == 0 and "nothing to resume in" in result.stderr and "training afresh" in result.stderr


@pytest.mark.parametrize(
    "layout, says",
    [
        ("no masks", "no masks folder for"),
        ("no photos", "no <car>_<NN>.jpg photos found in"),
    ],
)
def test_data_problems_are_sentences_before_any_work(data, tmp_path, layout, says):
    broken = tmp_path / "data"
    shutil.copytree(data / "train", broken / "train")
    if layout == "no photos":
        (broken / "train_masks").mkdir()
        for photo in (broken / "train").iterdir():
            photo.rename(photo.with_name(photo.name.replace("_", "-")))
    result = run_cli("train", broken, "-o", tmp_path / "run", *QUICK)
    assert result.exit_code == 2 and says in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_skipped_photos_are_named_counted_and_exit_1(data, tmp_path):
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    (broken / "train_masks" / "synth006c001_03_mask.gif").unlink()
    (broken / "train" / "synth006c002_04.jpg").write_text("not a photo")
    cache = tmp_path / "cache"
    result = run_cli("train", broken, "-o", tmp_path / "run", *QUICK, "--cache", cache)
    assert result.exit_code == 1, result.output
    assert result.stdout == f"best model: {tmp_path / 'run' / 'best.pt'}\n"
    assert f"carmask: skipped {broken / 'train_masks' / 'synth006c001_03_mask.gif'}: no such file" in result.stderr
    assert f"carmask: skipped {broken / 'train' / 'synth006c002_04.jpg'}: not a readable image" in result.stderr
    assert "carmask: 2 photo(s) skipped: 1 no such file, 1 not a readable image" in result.stderr
    assert "epoch 1: train loss" in result.stderr  # epochs on stderr ...
    assert "\r" not in result.stderr and "preparing inputs" not in result.stderr  # ... bars only on a terminal
    quiet = run_cli("-q", "train", broken, "-o", tmp_path / "quiet", *QUICK, "--cache", cache)
    assert quiet.exit_code == 1
    assert [line.split(":")[0] for line in quiet.stderr.splitlines()] == ["carmask"] * 3  # skips only


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.slow
@pytest.mark.parametrize("stream, bars", [(Terminal, True), (io.StringIO, False)])
def test_the_loops_bars_only_on_a_terminal(data, tmp_path, monkeypatch, stream, bars):
    from carmask.recipes import recipe
    from carmask.train import train

    stderr = stream()
    monkeypatch.setattr(sys, "stderr", stderr)
    config = recipe("seed", epochs=1, size=(32, 32), frame=(96, 64), batch_size=8)
    train(data, tmp_path / "run", config, device="cpu", cache_dir=tmp_path / "cache")
    assert ("preparing inputs" in stderr.getvalue() and "epoch 1/1" in stderr.getvalue()) == bars
    assert "epoch 1: train loss" in stderr.getvalue()


def test_interrupted_training_says_how_to_resume(data, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("carmask.train.train", interrupted)
    result = run_cli("train", data, "-o", tmp_path / "run", *QUICK)
    assert result.exit_code == 130 and "--resume" in result.stderr


def test_no_usable_photo_says_why(tmp_path):
    """Cars of 2 views for a model that needs sets: the sentence says what left them out."""
    data = make_dataset(tmp_path / "data", cars=1, views=2, test_cars=0, size=(96, 64), seed=6)
    result = run_cli("train", data, "-o", tmp_path / "run", *QUICK)
    assert result.exit_code == 2, result.output
    assert "no usable training photos in" in result.stderr and "(2 left out; the first: " in result.stderr
    assert "at least 3 views" in result.stderr


def test_one_car_trains_without_validation_and_says_so(tmp_path):
    """With one car none can be held out: said once, no 'val dice nan' per epoch."""
    data = make_dataset(tmp_path / "data", cars=1, test_cars=0, size=(96, 64), seed=6)
    result = run_cli("train", data, "-o", tmp_path / "run", *QUICK)
    assert result.exit_code == 0, result.output
    assert "none can be held out" in result.stderr and "no validation cars" in result.stderr
    assert "nan" not in result.stderr and (tmp_path / "run" / "best.pt").is_file()

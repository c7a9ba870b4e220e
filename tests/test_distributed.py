"""`carmask train` under torchrun: two gloo processes on the CPU give what one process gives."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from click.testing import CliRunner

import carmask
from carmask import distributed, models
from carmask.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
    ),
]

# The seed CNN, because it has no BatchNorm: on the CPU each process keeps its own
# batch statistics (see distributed.wrap), which would part the two runs' weights.
# Augmentation and a time budget (never reached) are on, to cover their shared draws
# and rank 0's clock.
ARGS = [
    "--arch",
    "seed",
    "--inputs",
    "rgb,median_diff",
    "--size",
    "48x32",
    "--frame",
    "192x128",
    "--no-crop",
    "--batch-size",
    "16",
    "--val-fraction",
    "0.34",
    "--augment",
    "--max-minutes",
    "30",
    "--device",
    "cpu",
]
FILES = {"best.pt", "model.pt", "last.pt", "metrics.csv", "curve.png", "split.json", "cache"}


def torchrun(*args: str) -> str:
    # The processes import the carmask that this test imported (the checkout under test).
    src = str(Path(carmask.__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--standalone",
        "-m",
        "carmask",
        "train",
        *args,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def one_process(*args: str) -> None:
    result = CliRunner().invoke(main, ["train", *args])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def runs(synth_data, tmp_path_factory):
    """Two epochs, then a third resumed from last.pt: under torchrun and in one process."""
    ddp, single = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("single")
    logs = []
    for epochs, resume in [("2", []), ("3", ["--resume"])]:
        args = [str(synth_data), *ARGS, "--epochs", epochs, *resume]
        logs.append(torchrun(*args, "-o", str(ddp)))
        one_process(*args, "-o", str(single))
    return ddp, single, logs


def metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_same_split_and_metrics(runs):
    ddp, single, _ = runs
    assert json.loads((ddp / "split.json").read_text()) == json.loads((single / "split.json").read_text())
    # One row per epoch: a second process appending its own rows would show here.
    assert [row["epoch"] for row in metrics(ddp)] == ["1", "2", "3"]
    for a, b in zip(metrics(ddp), metrics(single)):
        for column in ["train_loss", "val_loss", "val_dice"]:
            assert float(a[column]) == pytest.approx(float(b[column]), abs=2e-5), column


def weights(path):
    payload = torch.load(path, weights_only=True)
    return payload["model"] if path.name == "last.pt" else payload["state_dict"]


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_same_weights(runs, name):
    ddp, single, _ = runs
    got, want = weights(ddp / name), weights(single / name)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=key)


def test_rank_0_alone_logs_and_writes(runs):
    ddp, _, logs = runs
    assert {p.name for p in ddp.iterdir()} == FILES  # no temporary files left behind
    assert models.load(ddp / "best.pt")[1]["processes"] == 2
    first, resumed = logs
    assert first.count("epoch 1: train loss") == 1 and first.count("best model:") == 1
    assert "epoch 1: train loss" not in resumed and resumed.count("epoch 3: train loss") == 1


def test_each_process_takes_a_disjoint_share_of_a_batch(monkeypatch):
    rows = np.arange(10, 26)
    assert np.array_equal(distributed.share(rows), rows)  # one process: the whole batch
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    shares = []
    for rank in range(2):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        shares.append(distributed.share(rows))
    assert [len(s) for s in shares] == [8, 8] and np.array_equal(np.concatenate(shares), rows)

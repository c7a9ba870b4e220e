import csv
import json

import numpy as np
import pytest
import torch

from carmask import models
from carmask.data import augment, split_by_car
from carmask.inputs.spec import InputSpec
from carmask.train import TrainConfig, learning_rate, train

SMALL = InputSpec(("rgb", "median_diff"), size=(48, 32))


def test_split_is_by_car_and_deterministic():
    cars = [f"car{i}" for i in range(20)]
    train_cars, val_cars = split_by_car(cars, 0.25, seed=3)
    assert len(val_cars) == 5 and not set(train_cars) & set(val_cars)
    assert sorted(train_cars + val_cars) == sorted(cars)
    assert split_by_car(cars, 0.25, seed=3) == (train_cars, val_cars)


@pytest.mark.slow
def test_run_outputs_and_resume(synth_data, tmp_path):
    config = TrainConfig(
        arch="unet",
        arch_kwargs={"width": 4, "depth": 2},
        spec=SMALL,
        epochs=2,
        batch_size=16,
        val_fraction=0.34,
        augment=True,
        dice_weight=1.0,
        edge_weight=2.0,
    )
    best = train(synth_data, tmp_path, config, device="cpu", progress=False)
    for name in ["best.pt", "last.pt", "model.pt", "metrics.csv", "curve.png", "split.json"]:
        assert (tmp_path / name).stat().st_size > 0
    model, meta = models.load(best)
    assert meta["val_cars"] == 2 and meta["train_cars"] == 4
    assert model.mean.shape == (1, 6, 1, 1)  # normalisation statistics travel with the model
    config.epochs = 3
    train(synth_data, tmp_path, config, device="cpu", resume=True, progress=False)
    with open(tmp_path / "metrics.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2", "3"]


def test_augmentation_moves_inputs_and_targets_together():
    y = torch.zeros(4, 1, 32, 48)
    y[:, :, 8:20, 5:30] = 1
    x = y.repeat(1, 6, 1, 1) * 255
    generator = torch.Generator().manual_seed(0)
    ax, ay = augment(x, y, SMALL, generator, jitter=0.0)
    assert torch.allclose(ax[:, 0:1] / 255, ay, atol=1e-4)
    assert not torch.allclose(ay, y)  # something did move
    # Colour jitter scales the difference channels as it scales the photo.
    photo, background = torch.rand(1, 3, 8, 8) * 200, torch.rand(1, 3, 8, 8) * 200
    x = torch.cat([photo, (photo - background).abs()], 1)
    jx, _ = augment(x, torch.zeros(1, 1, 8, 8), SMALL, torch.Generator().manual_seed(1), shift=0, scale=0, degrees=0)
    gain = jx[:, 3:] / x[:, 3:].clamp(min=1e-3)
    assert torch.allclose(gain, gain.flatten()[0].expand_as(gain), atol=1e-3)


def test_augmenting_shares_of_a_batch_equals_augmenting_the_batch():
    # Under torchrun each process augments its share of the batch; together they
    # must match one process augmenting the whole batch with the same generator.
    x, y = torch.rand(8, 6, 32, 48) * 255, (torch.rand(8, 1, 32, 48) > 0.5).float()
    whole = augment(x, y, SMALL, torch.Generator().manual_seed(5))
    shares = [
        augment(x[k * 4 : (k + 1) * 4], y[k * 4 : (k + 1) * 4], SMALL, torch.Generator().manual_seed(5), part=(k, 2))
        for k in range(2)
    ]
    assert torch.equal(torch.cat([s[0] for s in shares]), whole[0])
    assert torch.equal(torch.cat([s[1] for s in shares]), whole[1])


def test_schedule():
    assert learning_rate(1e-3, "cosine", 0.0) < learning_rate(1e-3, "cosine", 0.05) == 1e-3
    assert learning_rate(1e-3, "cosine", 1.0) == np.float64(1e-5) or learning_rate(1e-3, "cosine", 1.0) < 2e-5
    assert learning_rate(1e-3, "constant", 0.7) == 1e-3


@pytest.mark.slow
def test_named_validation_cars_are_held_out(synth_data, tmp_path):
    from carmask.data import discover

    cars = sorted(discover(synth_data))
    config = TrainConfig(arch="seed", spec=SMALL, epochs=1, batch_size=16, val_cars=cars[:2] + ["not-here"])
    train(synth_data, tmp_path, config, device="cpu", progress=False)
    split = json.loads((tmp_path / "split.json").read_text())
    assert split == {"train": cars[2:], "val": cars[:2]}


@pytest.mark.slow
def test_a_cache_built_by_several_processes_is_the_one_built_by_one(synth_data, tmp_path):
    from carmask.data import InputCache, build_cache, discover

    cars = discover(synth_data)
    spec = InputSpec(("rgb", "median_diff", "mean_diff"), size=(48, 32), frame=(96, 64), crop=True)
    one = build_cache(cars, spec, tmp_path / "one", workers=1, progress=False)
    shared = build_cache(cars, spec, tmp_path / "three", workers=3, progress=False)
    assert shared.folder.name == one.folder.name
    assert [p.name for p in (tmp_path / "three").iterdir()] == [one.folder.name]  # no shares left behind
    assert shared.names == one.names and shared.cars == one.cars and shared.skipped == one.skipped
    assert np.array_equal(shared.inputs, one.inputs) and np.array_equal(shared.targets, one.targets)
    assert InputCache.build(cars, spec, tmp_path / "three").folder == shared.folder  # found, not rebuilt
    on_device = InputCache.build(cars, spec, tmp_path / "device", progress=False, device="cpu")  # as on a GPU
    assert np.array_equal(on_device.inputs, one.inputs) and np.array_equal(on_device.targets, one.targets)


def test_batches_from_a_cache_held_in_memory_match_the_files(synth_data, tmp_path):
    from carmask.data import InputCache, discover

    cache = InputCache.build(discover(synth_data), SMALL, tmp_path, progress=False)
    rows = np.array([7, 3, 40, 12])
    x, y = cache.batch(rows, "cpu")
    assert cache.keep_on(torch.device("cpu")) and cache.held is not None
    held_x, held_y = cache.batch(rows, "cpu")
    assert torch.equal(x, held_x) and torch.equal(y, held_y)
    assert x.shape == (4, 6, 32, 48) and y.shape == (4, 1, 32, 48)


def test_resuming_from_a_bad_last_pt_is_a_sentence(synth_data, tmp_path):
    config = TrainConfig(arch="seed", spec=SMALL, epochs=1, batch_size=16, val_fraction=0.34)
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"last.pt: cannot resume from it .*train into a new folder"):
        train(synth_data, tmp_path, config, device="cpu", resume=True, progress=False)


@pytest.mark.slow
def test_a_time_budget_stops_training(synth_data, tmp_path):
    config = TrainConfig(
        arch="seed", spec=SMALL, epochs=10_000, batch_size=16, val_fraction=0.34, max_minutes=0.01, schedule="cosine"
    )
    train(synth_data, tmp_path, config, device="cpu", progress=False)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert 1 <= len(rows) < config.epochs
    assert float(rows[-1]["seconds"]) >= 0.6  # the budget was spent, then training stopped
    assert float(rows[-1]["lr"]) < config.lr  # the schedule followed the budget


@pytest.mark.slow
def test_an_epoch_the_budget_left_no_step_is_not_logged(synth_data, tmp_path):
    """One step an epoch: the budget runs out during an epoch's last step, and
    the next epoch, with no step, was logged and saved as if trained (loss 0)."""
    config = TrainConfig(arch="seed", spec=SMALL, epochs=10_000, batch_size=1_000, val_fraction=0.34, max_minutes=0.005)
    train(synth_data, tmp_path, config, device="cpu", progress=False)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(float(row["train_loss"]) > 0 for row in rows)


@pytest.mark.slow
def test_resume_drops_the_row_of_an_epoch_that_never_reached_last_pt(synth_data, tmp_path):
    """Interrupted between writing an epoch's metrics row and its last.pt, the
    run trains that epoch again on --resume: its row was then in metrics.csv twice."""
    config = TrainConfig(arch="seed", spec=SMALL, epochs=1, batch_size=16, val_fraction=0.34)
    train(synth_data, tmp_path, config, device="cpu", progress=False)
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("2,0.5,0.5,0.5,1e-3,9.9\n")  # epoch 2's row; last.pt still says epoch 1
    train(
        synth_data,
        tmp_path,
        TrainConfig(arch="seed", spec=SMALL, epochs=2, batch_size=16, val_fraction=0.34),
        device="cpu",
        resume=True,
        progress=False,
    )
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["1", "2"] and rows[1]["seconds"] != "9.9"

"""Shared fixtures: a synthetic turntable dataset and tiny models trained on it."""
from pathlib import Path

import pytest

from carmask.inputs.spec import InputSpec
from carmask.synth import make_dataset
from carmask.train import SEED_SPEC, TrainConfig, train

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """6 training cars + 1 test car of 16 views at 192x128, exact masks."""
    return make_dataset(tmp_path_factory.mktemp("synth"), cars=6, size=(192, 128), seed=1, test_cars=1)


def _train(data, run_dir, **overrides) -> Path:
    config = TrainConfig(**{"val_fraction": 0.34, "epochs": 8, "batch_size": 16, **overrides})
    return train(data, run_dir, config, device="cpu", progress=False)


@pytest.fixture(scope="session")
def seed_model(synth_data, tmp_path_factory) -> Path:
    """The seed CNN (photo + median difference, auto-crop) trained briefly on synth."""
    spec = InputSpec(SEED_SPEC.channels, size=(64, 64), frame=(192, 128), crop=True)
    return _train(synth_data, tmp_path_factory.mktemp("seed-run"), spec=spec, lr=3e-3)


@pytest.fixture(scope="session")
def rgb_model(synth_data, tmp_path_factory) -> Path:
    """A small U-Net on the photo alone, for single photos."""
    return _train(synth_data, tmp_path_factory.mktemp("rgb-run"), arch="unet",
                  arch_kwargs={"width": 8, "depth": 3}, spec=InputSpec(("rgb",), size=(96, 64)),
                  lr=1e-2, dice_weight=1.0, schedule="cosine", epochs=10)


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / "carvana-512" / "train").is_dir():
        pytest.skip("real Carvana data (../shared/data) is not here")
    return REAL_DATA


@pytest.fixture
def tmpfs(tmp_path):
    """`tmpfs(size, readonly=False)`: a folder on a fresh tmpfs of `size` ("64k"),
    read-only if asked; skips where mounting is not permitted (not root)."""
    import subprocess

    from helpers import remount
    mounted = []

    def mount(size: str, readonly: bool = False) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip() or done.returncode}")
        mounted.append(where)
        if readonly:
            remount(where, "ro")
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


"""Shared fixtures: synthetic turntable datasets, tiny models trained on them, a
predictor and a client of the service over the photo-only one, and a recorder of
the network's inputs."""

import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image

from carmask.inputs.spec import InputSpec
from carmask.recipes import SEED_SPEC
from carmask.synth import make_dataset
from carmask.train import TrainConfig, train

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Models trained for the session: the first test to ask pays the training (rgb_model
# about 80 s on two busy cores), so every test that needs one is slow.
TRAINED = {"rgb_model", "seed_model"}


def pytest_collection_modifyitems(items):
    for item in items:
        if TRAINED & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """6 training cars + 1 test car of 16 views at 192x128, exact masks."""
    return make_dataset(tmp_path_factory.mktemp("synth"), cars=6, size=(192, 128), seed=1, test_cars=1)


def _train(data, run_dir, **overrides) -> Path:
    config = TrainConfig(**{"arch": "seed", "val_fraction": 0.34, "epochs": 8, "batch_size": 16, **overrides})
    return train(data, run_dir, config, device="cpu", progress=False)


@pytest.fixture(scope="session")
def seed_model(synth_data, tmp_path_factory) -> Path:
    """The seed CNN (photo + median difference, auto-crop) trained briefly on synth."""
    spec = InputSpec(SEED_SPEC.channels, size=(64, 64), frame=(192, 128), crop=True)
    return _train(synth_data, tmp_path_factory.mktemp("seed-run"), spec=spec, lr=3e-3)


@pytest.fixture(scope="session")
def rgb_model(synth_data, tmp_path_factory) -> Path:
    """A small U-Net on the photo alone, for single photos."""
    return _train(
        synth_data,
        tmp_path_factory.mktemp("rgb-run"),
        arch="unet",
        arch_kwargs={"width": 8, "depth": 3},
        spec=InputSpec(("rgb",), size=(96, 64)),
        lr=1e-2,
        dice_weight=1.0,
        schedule="cosine",
        epochs=10,
    )


@pytest.fixture(scope="session")
def small_cars(tmp_path_factory):
    """`small_cars(cars, seed)`: a Kaggle-layout folder (train/, train_masks/) of
    `cars` small synthetic cars of 16 views at 96x64, made once a session for
    each (cars, seed). Tests that change photos change a copy."""
    made = {}

    def make(cars: int, seed: int) -> Path:
        if (cars, seed) not in made:
            made[cars, seed] = make_dataset(
                tmp_path_factory.mktemp(f"cars{cars}-seed{seed}"), cars=cars, size=(96, 64), seed=seed
            )
        return made[cars, seed]

    return make


@pytest.fixture(scope="module")
def full(photos, tmp_path_factory):
    """What uninterrupted runs write for the requesting module's `photos` with
    the seed model: `full.csv` (carmask predict) and `cut/` (carmask cutout)."""
    out = tmp_path_factory.mktemp("full")
    model = ("--model", "seed", "--device", "cpu")
    assert run_cli("predict", photos, "-o", out / "full.csv", *model).exit_code == 0
    assert run_cli("cutout", photos, "-o", out / "cut", *model).exit_code == 0
    return out


@pytest.fixture(scope="session")
def synth_view(synth_data) -> tuple[Path, np.ndarray]:
    """A training view of `synth_data` (the first car's view 05) and its exact
    mask: (path, mask H x W bool)."""
    path = sorted((synth_data / "train").glob("*_05.jpg"))[0]
    return path, np.asarray(Image.open(synth_data / "train_masks" / f"{path.stem}_mask.gif")) > 0


@pytest.fixture(scope="module")
def rgb_predictor(rgb_model):
    """A CPU predictor over the small photo-only U-Net."""
    from carmask.predict import Predictor

    return Predictor(model=rgb_model, device="cpu")


@pytest.fixture(scope="module")
def client(rgb_predictor):
    """The service over `rgb_predictor`, through Starlette's TestClient."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from carmask.serve import create_app

    with TestClient(create_app(rgb_predictor)) as c:
        yield c


@pytest.fixture
def network_inputs():
    """The photos the network is run on while the test runs: each forward
    call's input batch (of the outermost module: the model a predictor holds,
    not its layers), split into single images, seen through torch's global
    module hooks, whatever code makes the call (in this process)."""
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    images, depth = [], threading.local()

    def before(module, args):
        if getattr(depth, "n", 0) == 0 and args and hasattr(args[0], "detach"):
            images.extend(args[0].detach().clone())
        depth.n = getattr(depth, "n", 0) + 1

    def after(module, args, output):
        depth.n -= 1

    handles = [register_module_forward_pre_hook(before), register_module_forward_hook(after)]
    try:
        yield images
    finally:
        for handle in handles:
            handle.remove()


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
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip() or done.returncode}")
        mounted.append(where)
        if readonly:
            remount(where, "ro")
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)

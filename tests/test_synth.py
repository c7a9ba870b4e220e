"""Tests for the synthetic turntable generator the rest of the suite trains on."""

import numpy as np
import pytest
from PIL import Image

from carmask.synth import CarSpec, make_dataset, random_car, render_view, studio_background

SIZE = (192, 128)  # (width, height)


def _turntable(seed: int, car_index: int = 0, size=SIZE):
    """Background plus the 16 photos and masks of one car."""
    background = studio_background(*size, seed=seed)
    rng = np.random.default_rng(seed)
    cars = [random_car(rng) for _ in range(car_index + 1)]
    views = [render_view(background, cars[-1], v, 16, rng) for v in range(1, 17)]
    photos = np.stack([p for p, _ in views])
    masks = np.stack([m for _, m in views])
    return background, photos, masks


def test_background_deterministic_and_shaped():
    a = studio_background(*SIZE, seed=3)
    assert a.shape == (SIZE[1], SIZE[0], 3) and a.dtype == np.uint8
    assert np.array_equal(a, studio_background(*SIZE, seed=3))
    assert not np.array_equal(a, studio_background(*SIZE, seed=4))


def test_random_car_deterministic():
    car = random_car(np.random.default_rng(5))
    assert isinstance(car, CarSpec)
    assert car == random_car(np.random.default_rng(5))


def test_render_deterministic_for_seed():
    _, photos_a, masks_a = _turntable(seed=1)
    _, photos_b, masks_b = _turntable(seed=1)
    assert np.array_equal(photos_a, photos_b) and np.array_equal(masks_a, masks_b)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masks_binary_and_reasonable_coverage(seed):
    _, photos, masks = _turntable(seed, car_index=seed)
    assert photos.shape == (16, SIZE[1], SIZE[0], 3) and photos.dtype == np.uint8
    assert masks.shape == (16, SIZE[1], SIZE[0]) and masks.dtype == np.uint8
    assert set(np.unique(masks)) == {0, 1}
    coverage = masks.mean(axis=(1, 2))
    assert coverage.min() > 0.15 and coverage.max() < 0.70
    # Whole car in frame: nothing touches the image border.
    assert not (masks[:, 0].any() or masks[:, -1].any() or masks[:, :, 0].any() or masks[:, :, -1].any())


def test_silhouette_changes_with_view():
    _, _, masks = _turntable(seed=0)
    changed = (masks[0] != masks[4]).sum() / masks[0].sum()  # side view vs end view
    assert changed > 0.3


def test_photos_differ_only_by_car_shadow_and_noise():
    background, photos, masks = _turntable(seed=0)
    assert not np.array_equal(photos[0], photos[8])  # sensor noise at least
    never_car = masks.sum(0) == 0
    diff = photos.astype(float).mean(-1) - background.astype(float).mean(-1)
    upper = never_car.copy()
    upper[SIZE[1] // 3 :] = False
    assert np.abs(diff[:, upper]).mean() < 3  # wall: noise only
    # The floor shadow darkens pixels outside the mask: it is not part of the car.
    lower = never_car.copy()
    lower[: SIZE[1] * 3 // 4] = False
    assert diff[:, lower].mean() < -2


@pytest.mark.parametrize("seed", [0, 1])
def test_median_of_views_recovers_background(seed):
    # The pipeline's per-car median background: wherever the car is absent in most
    # views the median photo must be the studio (the always-covered core cannot be).
    background, photos, masks = _turntable(seed, car_index=1)
    median = np.median(photos, axis=0)
    err = np.abs(median - background).mean(-1)
    mostly_free = masks.mean(0) < 0.5
    assert mostly_free.mean() > 0.5
    assert err[mostly_free].mean() < 6


def test_works_at_tiny_and_large_sizes():
    for size in [(64, 48), (480, 320)]:
        background = studio_background(*size, seed=0)
        photo, mask = render_view(background, random_car(np.random.default_rng(0)), 3)
        assert photo.shape == (size[1], size[0], 3) and mask.shape == (size[1], size[0])
        assert 0.1 < mask.mean() < 0.7


def test_make_dataset_layout(tmp_path):
    root = make_dataset(tmp_path / "data", cars=2, views=4, seed=2, test_cars=1)
    assert root == tmp_path / "data"
    ids = ["synth002c000", "synth002c001"]
    photos = sorted(p.name for p in (root / "train").iterdir())
    assert photos == [f"{c}_{v:02d}.jpg" for c in ids for v in range(1, 5)]
    masks = sorted(p.name for p in (root / "train_masks").iterdir())
    assert masks == [f"{c}_{v:02d}_mask.gif" for c in ids for v in range(1, 5)]
    for name in photos:
        with Image.open(root / "train" / name) as photo:
            assert photo.size == SIZE and photo.mode == "RGB"
        with Image.open(root / "train_masks" / name.replace(".jpg", "_mask.gif")) as gif:
            mask = np.array(gif)
        assert mask.shape == (SIZE[1], SIZE[0]) and set(np.unique(mask)) == {0, 1}
    # Test cars: photos only, numbered after the training cars.
    tests = sorted(p.name for p in (root / "test").iterdir())
    assert tests == [f"synth002c002_{v:02d}.jpg" for v in range(1, 5)]


def test_make_dataset_deterministic_and_shared_background(tmp_path):
    a = make_dataset(tmp_path / "a", cars=2, views=2, seed=4)
    b = make_dataset(tmp_path / "b", cars=2, views=2, seed=4)
    for name in ["synth004c000_01.jpg", "synth004c001_02.jpg"]:
        assert (a / "train" / name).read_bytes() == (b / "train" / name).read_bytes()
    assert not (a / "test").exists()
    # Both cars stand in the same studio: their top-left corners (never car) agree.
    corners = []
    for i in range(2):
        with Image.open(a / "train" / f"synth004c00{i}_01.jpg") as photo:
            corners.append(np.asarray(photo, float)[:10, :10])
    assert np.abs(corners[0] - corners[1]).mean() < 4

import dataclasses

import numpy as np
import pytest

from carmask.synth import make_dataset, random_car, render_view, studio_background
from carmask.views import (Box, InputSpec, NotEnoughViews, backgrounds, crop_box, model_input,
                           set_inputs)


@pytest.fixture(scope="module")
def turntable():
    rng = np.random.default_rng(3)
    studio = studio_background(192, 128, seed=3)
    car = random_car(rng)
    views = [render_view(studio, car, v, rng=rng) for v in range(1, 17)]
    return studio, np.stack([p for p, _ in views]), np.stack([m for _, m in views])


def test_median_of_the_views_is_the_studio(turntable):
    studio, photos, masks = turntable
    median = backgrounds(photos).median
    rarely_covered = masks.mean(axis=0) < 0.4
    error = np.abs(median.astype(int) - studio.astype(int)).mean(axis=-1)
    assert error[rarely_covered].mean() < 4


def test_too_few_views_say_why(turntable):
    _, photos, _ = turntable
    with pytest.raises(NotEnoughViews, match="at least 3 views"):
        backgrounds(photos[:2])
    assert backgrounds(photos[:3]).median.shape == photos.shape[1:]


def test_crop_box_holds_the_car():
    # A red car: a white car on the white wall is where any crop box can fail.
    rng = np.random.default_rng(4)
    studio = studio_background(192, 128, seed=4)
    car = dataclasses.replace(random_car(rng), colour=(170, 30, 30))
    views = [render_view(studio, car, v, rng=rng) for v in range(1, 17)]
    photos, masks = np.stack([p for p, _ in views]), np.stack([m for _, m in views])
    _, boxes = set_inputs(photos, InputSpec(size=(64, 64), frame=(192, 128), crop=True))
    for box, mask in zip(boxes, masks):
        inside = mask[box.top:box.bottom, box.left:box.right].sum()
        assert inside >= 0.99 * mask.sum()
        assert (box.right - box.left) * (box.bottom - box.top) < mask.size  # it does crop


def test_crop_box_of_an_empty_difference_is_the_frame():
    assert crop_box(np.zeros((10, 20, 3), np.uint8)) == Box(0, 0, 20, 10)


def test_inputs_stack_the_channels(turntable):
    _, photos, _ = turntable
    spec = InputSpec(("rgb", "median_diff", "mean_diff"), size=(96, 64), frame=(192, 128))
    x, boxes = set_inputs(photos, spec)
    assert x.shape == (16, 64, 96, 9) and x.dtype == np.uint8
    assert boxes[0] == Box(0, 0, 192, 128)
    with pytest.raises(NotEnoughViews):
        model_input(photos[0], spec)  # no background given
    rgb_only = InputSpec(("rgb",), size=(96, 64))
    assert model_input(photos[0][:64, :96], rgb_only)[0].shape == (64, 96, 3)


def test_spec_round_trip_and_validation():
    spec = InputSpec(("rgb", "mean_diff"), size=(100, 80), frame=(480, 320), crop=True)
    assert InputSpec.from_dict(spec.to_dict()) == spec
    assert spec.in_channels == 6 and spec.needs_views
    assert not InputSpec(("rgb",)).needs_views
    with pytest.raises(ValueError, match="unknown input channels"):
        InputSpec(("rgb", "depth"))


def test_memory_is_one_car_at_a_time(tmp_path):
    """The dataset is never loaded whole: inputs are cached car by car on disk."""
    from carmask.data import InputCache, discover
    data = make_dataset(tmp_path / "d", cars=3, size=(96, 64), seed=5)
    cache = InputCache.build(discover(data), InputSpec(size=(48, 32), frame=(96, 64)), tmp_path / "c",
                             progress=False)
    assert len(cache) == 48 and isinstance(cache.inputs, np.memmap)
    assert set(np.unique(cache.targets)) >= {0, 255}

import dataclasses

import numpy as np
import pytest
import torch

from carmask.inputs.background import backgrounds, crop_boxes, differing
from carmask.inputs.build import model_inputs
from carmask.inputs.resize import frames, resize, resize_image
from carmask.inputs.spec import Box, InputSpec, NotEnoughViews
from carmask.synth import make_dataset, random_car, render_view, studio_background


def tensors(photos: np.ndarray) -> torch.Tensor:
    """N x H x W x 3 uint8 photos as the N x 3 x H x W frames the pipeline works on."""
    return torch.from_numpy(photos).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def turntable():
    rng = np.random.default_rng(3)
    studio = studio_background(192, 128, seed=3)
    car = random_car(rng)
    views = [render_view(studio, car, v, rng=rng) for v in range(1, 17)]
    return studio, np.stack([p for p, _ in views]), np.stack([m for _, m in views])


def test_median_of_the_views_is_the_studio(turntable):
    studio, photos, masks = turntable
    median = backgrounds(tensors(photos), [16]).median[0].permute(1, 2, 0).numpy()
    rarely_covered = masks.mean(axis=0) < 0.4
    error = np.abs(median.astype(int) - studio.astype(int)).mean(axis=-1)
    assert error[rarely_covered].mean() < 4


@pytest.mark.parametrize("count", [3, 4, 5, 8, 15, 16, 17])
def test_median_and_mean_follow_numpy(count):
    """The median of an even count is the mean of the two middle values,
    truncated (np.median(...).astype(uint8)); the mean is rounded. Cars of
    different counts in one batch get what each alone would."""
    rng = np.random.default_rng(count)
    cars = [rng.integers(0, 256, (n, 6, 7, 3), dtype=np.uint8) for n in (count, 3, count)]
    cars[0][:, 0, 0, 0] = [0, 255] * (count // 2) + [9] * (count % 2)  # ties and extremes
    got = backgrounds(tensors(np.concatenate(cars)), [len(c) for c in cars])
    for k, car in enumerate(cars):
        median = got.median[k].permute(1, 2, 0).numpy()
        mean = got.mean[k].permute(1, 2, 0).numpy()
        assert np.array_equal(median, np.median(car, axis=0).astype(np.uint8))
        assert np.array_equal(mean, np.round(car.mean(axis=0, dtype=np.float32)).astype(np.uint8))


def test_too_few_views_say_why(turntable):
    _, photos, _ = turntable
    with pytest.raises(NotEnoughViews, match="at least 3 views"):
        backgrounds(tensors(photos[:2]), [2])
    assert backgrounds(tensors(photos[:3]), [3]).median.shape == (1, 3, 128, 192)


def test_crop_box_holds_the_car():
    # A red car: a white car on the white wall is where any crop box can fail.
    rng = np.random.default_rng(4)
    studio = studio_background(192, 128, seed=4)
    car = dataclasses.replace(random_car(rng), colour=(170, 30, 30))
    views = [render_view(studio, car, v, rng=rng) for v in range(1, 17)]
    photos, masks = np.stack([p for p, _ in views]), np.stack([m for _, m in views])
    boxes = model_inputs(tensors(photos), [16], InputSpec(size=(64, 64), frame=(192, 128), crop=True)).boxes
    for box, mask in zip(boxes, masks):
        inside = mask[box.top : box.bottom, box.left : box.right].sum()
        assert inside >= 0.99 * mask.sum()
        assert (box.right - box.left) * (box.bottom - box.top) < mask.size  # it does crop


def test_crop_boxes():
    differ = torch.zeros(2, 10, 20, dtype=torch.bool)
    differ[1, 3:6, 4:9] = True
    boxes = crop_boxes(differ, margin=0.1).tolist()
    assert boxes == [[0, 0, 20, 10], [2, 2, 11, 7]]  # nothing differs: the frame; else grown by 2 and 1
    diff = torch.zeros(1, 3, 1, 2, dtype=torch.uint8)
    diff[0, :, 0, 0] = torch.tensor([38, 39, 39])  # RMS 38.67 > 15% of 255 = 38.25
    diff[0, :, 0, 1] = 38  # RMS 38.0
    assert differing(diff, 0.15).tolist() == [[[True, False]]]


def test_inputs_stack_the_channels(turntable):
    _, photos, _ = turntable
    spec = InputSpec(("rgb", "median_diff", "mean_diff"), size=(96, 64), frame=(192, 128))
    inputs = model_inputs(tensors(photos), [16], spec)
    assert inputs.x.shape == (16, 9, 64, 96) and inputs.x.dtype == torch.uint8
    assert inputs.boxes[0] == Box(0, 0, 192, 128) and max(inputs.differing) < 0.45
    assert torch.equal(inputs.x[:, :3], frames(list(tensors(photos)), (96, 64)))
    with pytest.raises(NotEnoughViews):
        model_inputs(tensors(photos[:1]), [1], spec)  # a single photo has no background
    rgb_only = InputSpec(("rgb",), size=(96, 64))
    assert model_inputs(tensors(photos[:1, :64, :96]), [1], rgb_only).x.shape == (1, 3, 64, 96)


def test_resize_for_numpy_callers():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    image.flags.writeable = False  # as Pillow's arrays are
    half = resize(image, (30, 20))
    assert half.shape == (20, 30, 3) and half.dtype == np.uint8
    # what the pipeline's own resize gives the same pixels, not a transposed or garbled copy
    assert np.array_equal(half, resize_image(tensors(image[None]), (30, 20))[0].permute(1, 2, 0).numpy())
    colour = np.broadcast_to(np.array([17, 99, 201], np.uint8), (40, 60, 3))  # read-only too
    assert (resize(colour, (30, 20)) == [17, 99, 201]).all()  # one colour stays that colour, channels in order
    same = resize(image, (60, 40))
    assert np.array_equal(same, image) and same.flags.writeable  # its own size: the very pixels
    flat = np.full((40, 60), 0.25, np.float32)
    assert np.allclose(resize(flat, (90, 10)), 0.25)


def test_spec_round_trip_and_validation():
    spec = InputSpec(("rgb", "mean_diff"), size=(100, 80), frame=(480, 320), crop=True)
    assert InputSpec.from_dict(spec.to_dict()) == spec
    assert spec.in_channels == 6 and spec.needs_views
    assert not InputSpec(("rgb",)).needs_views
    with pytest.raises(ValueError, match="unknown input channels"):
        InputSpec(("rgb", "depth"))


def test_memory_is_one_car_at_a_time(tmp_path, monkeypatch):
    """The dataset is never loaded whole: inputs are cached car by car on disk.
    Counted: the decoded photos alive at once (each one the cache's decoder
    hands out, until it is freed), at most one car's 16 views of the 48."""
    import weakref

    from carmask import data as cache_module
    from carmask.data import InputCache, discover

    counts = {"alive": 0, "most": 0, "decoded": 0}

    def freed():
        counts["alive"] -= 1

    def counted(*args, **kwargs):
        photo = decode(*args, **kwargs)
        weakref.finalize(photo, freed)
        counts["decoded"] += 1
        counts["alive"] += 1
        counts["most"] = max(counts["most"], counts["alive"])
        return photo

    decode = cache_module.decode
    monkeypatch.setattr(cache_module, "decode", counted)
    data = make_dataset(tmp_path / "d", cars=3, size=(96, 64), seed=5)
    cache = InputCache.build(discover(data), InputSpec(size=(48, 32), frame=(96, 64)), tmp_path / "c", progress=False)
    assert counts["decoded"] == 48 and counts["most"] == 16
    assert len(cache) == 48 and isinstance(cache.inputs, np.memmap)
    assert set(np.unique(cache.targets)) >= {0, 255}


def test_the_training_cache_holds_the_predictors_inputs(tmp_path, seed_model):
    """Training and prediction see the same inputs: the cache's rows are what
    `Predictor.model_inputs` builds for the same files."""
    from carmask import models
    from carmask.data import InputCache, discover
    from carmask.predict import Predictor

    data = make_dataset(tmp_path / "d", cars=2, size=(240, 160), seed=6)  # larger than the frame
    cars = discover(data)
    spec = models.load(seed_model)[0].spec
    cache = InputCache.build(cars, spec, tmp_path / "c", progress=False)
    predictor = Predictor(seed_model, device="cpu", upright=False)
    for car, examples in sorted(cars.items()):
        rows = [i for i, c in enumerate(cache.cars) if c == car]
        x, _ = predictor.model_inputs([e.photo for e in examples])
        assert np.array_equal(np.asarray(cache.inputs[rows]), x)

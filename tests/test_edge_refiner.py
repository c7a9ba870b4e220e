"""The learned edge refiner (`carmask.models.refiner`) and its training (`carmask.train_refiner`),
on synthetic turntable sets: it learns, its checkpoint loads safely, its inference is one
function of tensors on any device and any batch size."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from carmask.metrics import batch_dice
from carmask.models import refiner as rf
from carmask.models import refiner_frames as frames
from carmask.refiner_data import Buffer, TileBuffer, coarse_probs
from carmask.synth import random_car, render_view, studio_background
from carmask.train_config import RefinerConfig
from carmask.train_refiner import train, train_one_epoch

SIZE = (192, 128)


@pytest.fixture(scope="module")
def turntable():
    """Two synthetic cars of 8 views each: photos N x 3 x H x W uint8, each car's
    median studio, true masks, and a coarse mask as a small network gives it:
    the true mask blurred and its edge moved by a smooth random field."""
    background = studio_background(*SIZE, seed=3)
    rng = np.random.default_rng(3)
    photos, masks = [], []
    for _ in range(2):
        car = random_car(rng)
        for view in range(1, 9):
            photo, mask = render_view(background, car, view, 8, rng=rng)
            photos.append(photo)
            masks.append(mask)
    photos = torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(np.stack(masks).astype(np.uint8))
    studios = frames.set_studios(photos, [8, 8])
    generator = torch.Generator().manual_seed(0)
    truth = masks[:, None].float()
    low = F.interpolate(truth, size=(SIZE[1] // 4, SIZE[0] // 4), mode="bilinear", antialias=True)
    shift = F.interpolate(
        torch.rand((len(truth), 1, 4, 6), generator=generator) - 0.5, size=low.shape[-2:], mode="bilinear"
    )
    coarse = F.interpolate(torch.sigmoid((low - 0.5 + 0.4 * shift) * 8), size=(SIZE[1], SIZE[0]), mode="bilinear")[:, 0]
    return photos, studios, coarse, masks


def _dice(probs, masks):
    return batch_dice(probs > 0.5, masks.bool()).mean().item()


def test_the_refiner_learns_to_sharpen_a_blurred_coarse_mask(turntable):
    photos, studios, coarse, masks = turntable
    torch.manual_seed(0)
    refiner = rf.EdgeRefiner(radius=2, ring=4, hidden=(32, 16), low=0.05)
    config = RefinerConfig(
        batch_size=2048, buffer=6, refresh=1, steps_per_epoch=150, epochs=1, lr=1e-2, max_minutes=None
    )
    coarse_u8 = frames.to_uint8(coarse)

    def fetch(items):  # the first car trains, the second one is measured
        return photos[items], studios[items], coarse_u8[items], masks[items]

    buffer = Buffer(fetch, list(range(8)), config, refiner.offsets, torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(refiner.parameters(), lr=config.lr)
    loss, out_of_time, _ = train_one_epoch(
        refiner, F.binary_cross_entropy_with_logits, optimizer, buffer, config, epoch=0
    )
    assert loss is not None and not out_of_time
    refiner.eval()
    before = _dice(coarse[8:], masks[8:])
    after = _dice(frames.refine_batch(refiner, photos[8:], studios[8:], coarse[8:]), masks[8:])
    assert after > before + 0.003, (before, after)  # on the car it never saw


def test_the_tile_refiner_learns_to_sharpen_a_blurred_coarse_mask(turntable):
    photos, studios, coarse, masks = turntable
    torch.manual_seed(0)
    refiner = rf.TileRefiner(channels=16, dilations=(1, 2, 4, 1), tile=32, low=0.05)
    config = RefinerConfig(
        shape="tiles",
        tile=32,
        batch_size=32,
        buffer=6,
        refresh=1,
        steps_per_epoch=300,
        epochs=1,
        lr=1e-2,
        max_minutes=None,
    )
    coarse_u8 = frames.to_uint8(coarse)

    def fetch(items):  # the first car trains, the second one is measured
        return photos[items], studios[items], coarse_u8[items], masks[items]

    buffer = TileBuffer(fetch, list(range(8)), config, torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(refiner.parameters(), lr=config.lr)
    loss, out_of_time, _ = train_one_epoch(
        refiner, F.binary_cross_entropy_with_logits, optimizer, buffer, config, epoch=0
    )
    assert loss is not None and not out_of_time
    refiner.eval()
    before = _dice(coarse[8:], masks[8:])
    after = _dice(frames.refine_batch(refiner, photos[8:], studios[8:], coarse[8:]), masks[8:])
    assert after > before + 0.003, (before, after)  # on the car it never saw


def test_a_photos_refined_result_does_not_depend_on_the_rest_of_its_batch(turntable):
    """The CNN runs in calls of one size (a convolution's result depends on
    its call's size), so a resumed run or a photo alone gives the same."""
    photos, studios, coarse, _ = turntable
    torch.manual_seed(5)
    refiner = rf.TileRefiner(channels=32, dilations=(1, 2, 4), tile=64, fine=16).eval()  # the shipped shape
    torch.nn.init.normal_(refiner.head.weight, std=0.5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the predictor's streams run torch (and where the call's size shows)
    try:
        whole = frames.refine_batch(refiner, photos, studios, coarse)
        alone = [frames.refine_batch(refiner, *(x[i : i + 1] for x in (photos, studios, coarse)))[0] for i in range(16)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(whole[i], alone[i]) for i in range(16))


@pytest.mark.parametrize("tile", [32, 48])  # 48: the frame (192x128) is not a whole number of tiles
def test_tile_inference_is_the_cnn_on_each_tile_and_leaves_the_rest_alone(turntable, tile):
    photos, studios, coarse, _ = turntable
    torch.manual_seed(4)
    refiner = rf.TileRefiner(channels=8, dilations=(1, 2), tile=tile).eval()
    torch.nn.init.normal_(refiner.head.weight, std=0.5)  # a fresh one starts as the identity
    whole = frames.refine_batch(refiner, photos, studios, coarse)
    ones = torch.cat(
        [
            frames.refine_batch(refiner, photos[i : i + 1], studios[i : i + 1], coarse[i : i + 1])
            for i in range(len(photos))
        ]
    )
    chunked = frames.refine_batch(refiner, photos, studios, coarse, chunk=1024)  # one tile a call
    assert whole.shape == coarse.shape and whole.dtype == torch.float32
    assert torch.allclose(whole, ones, atol=1e-6) and torch.allclose(whole, chunked, atol=1e-6)
    inside = (coarse > 0.05) & (coarse < 0.95)
    assert torch.equal(whole[~inside], coarse[~inside]) and not torch.equal(whole, coarse)
    # the first tile by hand: the CNN on its planes, added to the coarse logit at the band's pixels
    table = frames.packed(photos[:1], studios[:1], coarse[:1])
    planes = table[..., None].view(torch.uint8).permute(0, 3, 1, 2)[:, :, :tile, :tile]
    with torch.no_grad():
        by_hand = torch.sigmoid(torch.logit(coarse[0, :tile, :tile].clamp(1e-4, 1 - 1e-4)) + refiner(planes)[0])
    band = inside[0, :tile, :tile]
    assert torch.allclose(whole[0, :tile, :tile][band], by_hand[band], atol=1e-5)


@pytest.mark.parametrize("fine", [0, 8])
def test_tile_tta_makes_the_refiner_see_a_mirrored_photo_as_the_photo(turntable, fine):
    photos, studios, coarse, _ = turntable  # 192 wide: whole 32x32 tiles, the grid its own mirror image
    torch.manual_seed(5)
    refiner = rf.TileRefiner(channels=8, dilations=(1, 2), tile=32, fine=fine).eval()
    torch.nn.init.normal_(refiner.head.weight, std=0.5)

    def mirrored(tta):
        out = frames.refine_batch(refiner, photos.flip(-1), studios.flip(-1), coarse.flip(-1), tta=tta)
        return out.flip(-1)

    plain, tta = (frames.refine_batch(refiner, photos, studios, coarse, tta=t) for t in (False, True))
    assert not torch.allclose(plain, mirrored(False), atol=1e-4)  # the CNN alone is not symmetric
    assert torch.allclose(tta, mirrored(True), atol=1e-5)
    inside = (coarse > 0.05) & (coarse < 0.95)
    assert torch.equal(tta[~inside], coarse[~inside])


def test_refine_frames_finds_each_photos_studio(turntable):
    """The join's seam: a set's views get the set's studio, a photo alone its own estimate."""
    photos, _, coarse, _ = turntable
    torch.manual_seed(5)
    refiner = rf.TileRefiner(channels=8, dilations=(1, 2), tile=32).eval()
    torch.nn.init.normal_(refiner.head.weight, std=0.5)
    views = [list(range(8))] * 8 + [[i] for i in range(8, 16)]  # the first car as a set, the second's alone
    out = frames.refine_frames(refiner, photos, coarse, views)
    as_set = frames.refine_batch(refiner, photos[:8], frames.set_studios(photos[:8], [8], coarse[:8]), coarse[:8])
    alone = frames.refine_batch(refiner, photos[8:], frames.photo_studio(photos[8:], coarse[8:]), coarse[8:])
    assert torch.allclose(out, torch.cat([as_set, alone]), atol=1e-6)  # batched convolutions: float order
    assert torch.allclose(frames.refine_frames(refiner, photos[8:9], coarse[8:9], [[0]]), alone[:1], atol=1e-6)


def test_tile_checkpoints_load_safely(tmp_path):
    torch.manual_seed(6)
    refiner = rf.TileRefiner(channels=8, dilations=(1, 2, 4), tile=32)
    rf.save(refiner, tmp_path / "t.pt", {"note": "tiles"})
    loaded, meta = rf.load(tmp_path / "t.pt")
    assert isinstance(loaded, rf.TileRefiner) and loaded.config == refiner.config and meta == {"note": "tiles"}
    payload = torch.load(tmp_path / "t.pt", weights_only=True)
    for config in (
        {**refiner.config, "channels": 4096},
        {**refiner.config, "dilations": [1] * 99},
        {**refiner.config, "tile": 0},
        {**refiner.config, "extra": 1},
    ):
        torch.save({**payload, "config": config}, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match="outside its bounds"):
            rf.load(tmp_path / "bad.pt")
    torch.save({**payload, "config": {**refiner.config, "channels": 16}}, tmp_path / "shapes.pt")
    with pytest.raises(ValueError, match="do not fit"):
        rf.load(tmp_path / "shapes.pt")


def test_inference_is_the_same_for_any_batch_and_leaves_the_rest_alone(turntable):
    photos, studios, coarse, _ = turntable
    torch.manual_seed(1)
    refiner = rf.EdgeRefiner(radius=2, ring=4, hidden=(16,)).eval()
    whole = frames.refine_batch(refiner, photos, studios, coarse)
    ones = torch.cat(
        [
            frames.refine_batch(refiner, photos[i : i + 1], studios[i : i + 1], coarse[i : i + 1])
            for i in range(len(photos))
        ]
    )
    chunked = frames.refine_batch(refiner, photos, studios, coarse, chunk=1000)
    assert whole.shape == coarse.shape and whole.dtype == torch.float32
    assert torch.allclose(whole, ones, atol=1e-6) and torch.allclose(whole, chunked, atol=1e-6)
    outside = (coarse <= 0.05) | (coarse >= 0.95)
    assert torch.equal(whole[outside], coarse[outside])  # only the band is re-decided
    assert not torch.equal(whole, coarse)
    # channels-last photos (as the predictor holds them) give the same
    cl = frames.refine_batch(refiner, photos.contiguous(memory_format=torch.channels_last), studios, coarse)
    assert torch.equal(cl, whole)


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"))],
)
def test_inference_runs_on_the_tensors_device(turntable, device):
    photos, studios, coarse, _ = turntable
    torch.manual_seed(2)
    refiner = rf.EdgeRefiner(radius=2, ring=4, hidden=(16,)).eval()
    on_cpu = frames.refine_batch(refiner, photos, studios, coarse)
    there = frames.refine_batch(refiner.to(device), photos.to(device), studios.to(device), coarse.to(device))
    assert there.device.type == device
    assert torch.allclose(there.cpu(), on_cpu, atol=1e-4)
    single = frames.photo_studio(photos[:2].to(device), coarse[:2].to(device))
    assert single.shape == photos[:2].shape and single.dtype == torch.uint8 and single.device.type == device


def test_the_single_photo_studio_is_near_the_real_one(turntable):
    photos, studios, coarse, masks = turntable
    estimate = frames.photo_studio(photos, coarse).float()
    studio = torch.from_numpy(studio_background(*SIZE, seed=3)).permute(2, 0, 1).float()
    near_edge = (coarse > 0.05) & (coarse < 0.95)
    error = (estimate - studio).abs().mean(1)[near_edge]
    assert error.mean() < 25  # grey levels, at the band's pixels (the studio behind the car's edge)


def test_checkpoints_load_safely_and_in_half_precision(tmp_path):
    torch.manual_seed(3)
    refiner = rf.EdgeRefiner(radius=2, ring=4, hidden=(16, 8), low=0.04)
    rf.save(refiner, tmp_path / "r.pt", {"note": "test"})
    payload = torch.load(tmp_path / "r.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in payload["state_dict"].values())
    loaded, meta = rf.load(tmp_path / "r.pt")
    assert meta == {"note": "test"} and loaded.config == refiner.config and not loaded.training
    for a, b in zip(loaded.parameters(), refiner.parameters()):
        assert a.dtype == torch.float32 and torch.allclose(a, b, atol=1e-3)

    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    torch.save({"format": rf.FORMAT, "config": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a loadable refiner checkpoint"):
        rf.load(tmp_path / "evil.pt")
    for config in (
        {"radius": 99, "ring": 0, "hidden": [8], "low": 0.05},
        {"radius": 2, "ring": 0, "hidden": [100_000], "low": 0.05},
        "nonsense",
    ):
        torch.save({**payload, "config": config}, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match="outside its bounds|unreadable refiner config"):
            rf.load(tmp_path / "bad.pt")
    torch.save({**payload, "config": {**payload["config"], "hidden": [32, 8]}}, tmp_path / "shapes.pt")
    with pytest.raises(ValueError, match="do not fit"):
        rf.load(tmp_path / "shapes.pt")


def test_perturbed_coarse_outputs_stay_in_place(synth_data, rgb_model):
    """The perturbed copies (views moved and mirrored; the output moved back) are
    the same model's outputs on the same car, in place: as good as the plain one.
    (Recolouring moves this small synthetic model's outputs by more, not their place.)"""
    from carmask import models
    from carmask.inputs.decode import decode
    from carmask.io import read_mask

    model = models.load(rgb_model)[0]
    paths = sorted((synth_data / "train").glob("*_0[1-4].jpg"))
    photos = torch.stack([decode(p, upright=False) for p in paths])
    truth = torch.from_numpy(
        np.stack([read_mask(synth_data / "train_masks" / f"{p.stem}_mask.gif") for p in paths])
    ).bool()
    plain = coarse_probs(model, photos)
    dice = batch_dice(plain > 127, truth).mean()
    for seed in range(3):  # each copy moved back in place: as good as the plain one, not the same
        moved = coarse_probs(model, photos, torch.Generator().manual_seed(seed), jitter=0)
        assert moved.shape == plain.shape and not torch.equal(moved, plain)
        assert batch_dice(moved > 127, truth).mean() > dice - 0.005


def test_the_recipe_trains_through_the_cli_loop_and_resumes(synth_data, rgb_model, tmp_path):
    config = RefinerConfig(
        sources=((str(rgb_model), "photo"), (str(rgb_model), "set")),
        perturb=1,
        batch_size=512,
        buffer=8,
        steps_per_epoch=5,
        epochs=2,
        max_minutes=None,
    )
    best = train(synth_data, tmp_path, config, progress=False)
    loaded, meta = rf.load(best)
    assert meta["kind"] == "refiner" and meta["epochs"] in (1, 2) and meta["coarse_copies"] == 2
    assert len(meta["val_dice_by_source"]) == 2
    split = json.loads((tmp_path / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"]) and split["val"]
    config.epochs = 3
    train(synth_data, tmp_path, config, resume=True, progress=False)
    assert [line.split(",")[0] for line in (tmp_path / "metrics.csv").read_text().split()[1:]] == ["1", "2", "3"]


@pytest.fixture
def shipped_refiner(tmp_path, monkeypatch):
    """A small refiner shipped in a stand-in weights/refiners/, with its figures."""
    folder = tmp_path / "refiners"
    folder.mkdir()
    rf.save(rf.TileRefiner(channels=8, dilations=(1, 2), tile=32), folder / "edge-test.pt")
    (folder / "catalog.json").write_text(
        json.dumps(
            {
                "edge-test": {
                    "tier": "refiner on fast",
                    "after": ["multiview-fast", "rgb-fast"],
                    "dice_512_sets_before": 0.9916,
                    "dice_512_sets": 0.9944,
                    "dice_512_single_before": 0.99,
                    "dice_512_single": 0.993,
                    "cpu_s_per_photo": 0.12,
                }
            }
        )
    )
    monkeypatch.setattr(rf, "SHIPPED_DIR", folder)
    return folder / "edge-test.pt"


def test_models_lists_the_shipped_refiners_and_export_refuses_them(shipped_refiner, tmp_path):
    from click.testing import CliRunner

    from carmask.cli import main

    assert rf.shipped() == ["edge-test"] and isinstance(rf.load("edge-test")[0], rf.TileRefiner)
    listed = CliRunner().invoke(main, ["models"])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if line.startswith("edge-test"))
    assert "refiner on fast" in row and "0.9916 -> 0.9944" in row and "+0.120" in row
    for name in ("edge-test", str(shipped_refiner)):
        refused = CliRunner().invoke(main, ["export", name, "-o", str(tmp_path / "r.onnx")])
        assert refused.exit_code == 2 and "is an edge refiner, not a coarse model" in refused.output
        assert not (tmp_path / "r.onnx").exists()


def test_the_shipped_refiners_are_small_half_precision_and_carded():
    folder = rf.SHIPPED_DIR
    for name in rf.shipped():
        path = folder / f"{name}.pt"
        assert path.stat().st_size < 16 * 2**20
        payload = torch.load(path, weights_only=True)
        assert all(v.dtype == torch.float16 for v in payload["state_dict"].values() if v.is_floating_point())
        rf.load(name)
        card = (folder / f"{name}.md").read_text()
        assert "carmask train" in card and name in rf.catalog()

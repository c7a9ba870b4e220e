import pickle

import pytest
import torch

from carmask import models
from carmask.inputs.spec import InputSpec


def registry_cases() -> list:
    """Every registered architecture (models.ARCHITECTURES), as
    segmentation_models.pytorch tests every model it registers: with its
    defaults, and with each option a checkpoint may set (models.ARCH_LIMITS)
    at its smallest; a new architecture is tested without a line here."""
    cases = []
    for arch in models.ARCHITECTURES:
        limits = models.ARCH_LIMITS[arch]
        cases.append(pytest.param(arch, {}, id=f"{arch}-defaults"))
        if limits:
            smallest = {option: low for option, (low, high) in limits.items()}
            cases.append(pytest.param(arch, smallest, id=f"{arch}-" + "-".join(f"{k}{v}" for k, v in smallest.items())))
    return cases


CASES = registry_cases()


def test_the_registry_and_its_limits_agree():
    """Every registered architecture has its bounds, and they name options its constructor takes."""
    import inspect

    assert set(models.ARCH_LIMITS) == set(models.ARCHITECTURES)
    for arch, network in models.ARCHITECTURES.items():
        options = set(inspect.signature(network).parameters) - {"in_channels"}
        assert set(models.ARCH_LIMITS[arch]) <= options, arch


@pytest.mark.parametrize("arch, kwargs", CASES)
@pytest.mark.parametrize("height, width", [(64, 64), (50, 75), (33, 47)])
def test_forward_backward_any_size(arch, kwargs, height, width):
    model = models.Segmenter(arch, InputSpec(("rgb", "median_diff")), kwargs)
    x = torch.rand(2, 6, height, width) * 255
    out = model(x)
    assert out.shape == (2, 1, height, width)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("arch, kwargs", CASES)
def test_save_and_load_give_the_same_model(arch, kwargs, tmp_path):
    spec = InputSpec(("rgb",), size=(40, 30))
    model = models.Segmenter(arch, spec, kwargs, mean=[1.0, 2.0, 3.0], std=[4.0, 5.0, 6.0]).eval()
    models.save(model, tmp_path / "m.pt", {"note": "test"})
    loaded, meta = models.load(tmp_path / "m.pt")
    x = torch.rand(1, 3, 30, 40) * 255
    assert torch.allclose(model(x), loaded(x))
    assert loaded.spec == spec and meta == {"note": "test"}


class Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_checkpoint_cannot_run_code(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"format": models.FORMAT, "payload": Exploit()}, f)
    with pytest.raises(ValueError, match="not a loadable carmask checkpoint") as caught:
        models.load(evil)
    assert "must never run" not in capsys.readouterr().out
    # one line, and never torch's advice to load it again with weights_only=False
    assert "\n" not in str(caught.value) and "weights_only" not in str(caught.value)


def test_unknown_names_and_junk_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shipped model named"):
        models.load("no-such-model")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError):
        models.load(junk)


@pytest.mark.parametrize("name", models.shipped())
def test_every_listed_model_loads_and_predicts_a_synthetic_set(name, synth_data):
    """Every shipped model loads safely and predicts a synthetic 16-view set (and a
    single photo, where it takes one), at the photos' own size."""
    from carmask.io import find_photos
    from carmask.kaggle import group_by_car
    from carmask.predict import Predictor

    model, meta = models.load(name)
    assert meta["val_dice"] > 0.9 and next(model.parameters()).dtype == torch.float32
    (photo_set,) = group_by_car(find_photos([synth_data / "test"]))
    predictor = Predictor(name, device="cpu")
    predictions = list(predictor.predict_sets([photo_set]))
    assert [p.path for p in predictions] == photo_set.paths and not any(p.error for p in predictions)
    assert all(p.probs.shape == (128, 192) and 0 <= p.probs.min() <= p.probs.max() <= 1 for p in predictions)
    if not model.spec.needs_views:
        (alone,) = list(predictor.predict_sets([type(photo_set)(None, photo_set.paths[:1])]))
        assert alone.error is None and alone.probs.shape == (128, 192)


def test_carmask_models_lists_every_shipped_model():
    from helpers import run_cli

    result = run_cli("models")
    assert result.exit_code == 0, result.output
    models_table, *refiners = result.output.split("\n\n")  # then the edge refiners' table, if any ship
    lines = models_table.splitlines()
    assert lines[0].split()[:2] == ["name", "photos"]
    listed = {line.split()[0]: line for line in lines[1:]}
    assert sorted(listed) == models.shipped()
    for name, line in listed.items():
        figures = models.catalog()[name]
        assert f"{figures['dice_512']:.4f}" in line and f"{figures['cpu_s_per_photo']:.3f}" in line
        assert f"{models.resolve(name).stat().st_size / 2**20:.1f} MiB" in line
    assert "sets of views" in listed[models.default_for(16)]
    assert "single photos" in listed[models.default_for(1)]


# -- names and tiers ---------------------------------------------------------------------------


def fake_weights(folder, names):
    """A weights folder holding tiny models under these names."""
    for name in names:
        spec = InputSpec(("rgb",) if name.startswith("rgb") else ("rgb", "median_diff"), size=(32, 32))
        models.save(models.Segmenter("seed", spec), folder / f"{name}.pt", {"val_dice": 0.95})
    return folder


ALL = ["multiview-fast", "rgb-fast", "multiview-accurate", "rgb-accurate"]


@pytest.mark.parametrize(
    "shipped, views, tier, device, want",
    [
        # On a GPU the most accurate tier shipped, then the kind that fits the photo.
        (ALL, 16, None, "cuda", "multiview-accurate"),
        (ALL, 1, None, "cuda", "rgb-accurate"),
        # On the CPU the fast tier: an accurate network is tens of times slower there.
        (ALL, 16, None, "cpu", "multiview-fast"),
        (ALL, 1, None, "cpu", "rgb-fast"),
        (["multiview-accurate", "rgb-accurate"], 16, None, "cpu", "multiview-accurate"),  # where no fast one ships
        # A named tier, whatever the device.
        (ALL, 16, "fast", "cuda", "multiview-fast"),
        (ALL, 2, "fast", "cuda", "rgb-fast"),
        (ALL, 16, "accurate", "cpu", "multiview-accurate"),
        (["multiview-fast", "rgb-fast", "seed"], 16, None, "cuda", "multiview-fast"),
        (["multiview-fast", "rgb-fast", "seed"], 1, None, "cpu", "rgb-fast"),
        # An accurate single-photo model beats a fast multi-view one on a GPU.
        (["multiview-fast", "rgb-fast", "rgb-accurate"], 16, None, "cuda", "rgb-accurate"),
        (["multiview-fast", "rgb-fast", "rgb-accurate"], 16, None, "cpu", "multiview-fast"),
        (["multiview-fast", "rgb-fast", "rgb-accurate"], 16, "fast", "cuda", "multiview-fast"),
    ],
)
def test_default_rule(shipped, views, tier, device, want, tmp_path, monkeypatch):
    monkeypatch.setattr(models, "WEIGHTS_DIR", fake_weights(tmp_path, shipped))
    assert models.default_for(views, tier=tier, device=device) == want


def test_with_accurate_models_shipped_the_cpu_keeps_the_fast_tier_and_its_refiner(tmp_path, monkeypatch):
    """Shipping the GPU-trained accurate models makes them the default on a GPU
    only: a CPU predictor, its run record and `carmask models` keep the fast
    tier and its edge refiner."""
    from helpers import run_cli

    from carmask.models import refiner as rf
    from carmask.predict import Predictor
    from carmask.submission import _model_record, refiner_record

    monkeypatch.setattr(models, "WEIGHTS_DIR", fake_weights(tmp_path, ALL))
    with Predictor(device="cpu") as predictor:
        runner = predictor._runner
        assert predictor.model_for(16) is runner.load("multiview-fast")
        assert predictor.model_for(1) is runner.load("rgb-fast")
        assert predictor.refiner == "edge-refiner-fast"
    assert models.stands_for(None, "cuda") == ["multiview-accurate", "rgb-accurate"]
    assert rf.chosen("auto", None, "cuda") is None  # none is made for the accurate tier
    assert "multiview-fast, rgb-fast" in _model_record(None, "cpu")["name"]
    assert "multiview-accurate, rgb-accurate" in _model_record(None, "cuda")["name"]
    assert refiner_record("auto", None, "cpu").startswith("edge-refiner-fast")
    assert refiner_record("auto", None, "cuda") is None

    listed = {line.split()[0]: line for line in run_cli("models").output.splitlines() if line.strip()}
    assert listed["multiview-accurate"].endswith("sets of views on a GPU")
    assert listed["multiview-fast"].endswith("sets of views on the CPU")
    assert listed["rgb-accurate"].endswith("single photos on a GPU")
    assert listed["edge-refiner-fast"].endswith("sets of views, single photos on the CPU")


def test_kinds_tiers_and_names_resolve(tmp_path, monkeypatch):
    from carmask.inputs.spec import NotEnoughViews
    from carmask.predict import Predictor

    monkeypatch.setattr(models, "WEIGHTS_DIR", fake_weights(tmp_path, ["multiview-fast", "rgb-fast", "seed"]))
    assert models.resolve("multiview") == tmp_path / "multiview-fast.pt"  # a kind: its best tier
    assert models.resolve("rgb") == tmp_path / "rgb-fast.pt"
    assert models.split_name("multiview-fast") == ("multiview", "fast")
    assert models.split_name("seed") == ("seed", None)
    with pytest.raises(ValueError, match="no accurate model is shipped"):
        models.check("accurate")
    with pytest.raises(NotEnoughViews, match="no shipped accurate single-photo model"):
        models.default_for(1, tier="accurate")
    with pytest.raises(ValueError, match="is a tier"):
        models.load("fast")
    models.check("fast")
    fast = Predictor("fast", device="cpu")
    runner = fast._runner
    assert fast.model_for(16) is runner.load("multiview-fast") and fast.model_for(1) is runner.load("rgb-fast")


# -- checkpoints ------------------------------------------------------------------------------


def test_half_precision_on_disk_float32_in_memory(tmp_path):
    spec = InputSpec(("rgb",), size=(40, 30))
    model = models.Segmenter("unet", spec, {"width": 8, "depth": 3}, mean=[1.0, 2.0, 3.0], std=[4.0, 5.0, 6.0]).eval()
    models.save(model, tmp_path / "full.pt")
    models.save(model, tmp_path / "half.pt", half=True)
    full, half = (tmp_path / "full.pt").stat().st_size, (tmp_path / "half.pt").stat().st_size
    assert half < 0.6 * full
    payload = torch.load(tmp_path / "half.pt", weights_only=True)
    assert payload["dtype"] == "float16" and payload["state_dict"]["net.head.weight"].dtype == torch.float16
    assert payload["state_dict"]["mean"].dtype == torch.float32  # normalisation kept exact
    loaded, _ = models.load(tmp_path / "half.pt")
    assert all(p.dtype == torch.float32 for p in loaded.state_dict().values() if p.is_floating_point())
    x = torch.rand(2, 3, 30, 40) * 255
    assert torch.allclose(model(x), loaded(x), atol=2e-2)


def test_a_unet_at_512_fits_in_16_mib_at_half_precision(tmp_path):
    from carmask.recipes import recipe

    config = recipe("multiview-accurate")
    models.save(models.Segmenter(config.arch, config.spec, config.arch_kwargs), tmp_path / "m.pt", half=True)
    assert (tmp_path / "m.pt").stat().st_size < 16 * 2**20


def checkpoint(tmp_path, **changes):
    """A valid small checkpoint's payload with some entries changed or removed (None)."""
    model = models.Segmenter("unet", InputSpec(("rgb",), size=(32, 32)), {"width": 4, "depth": 2})
    models.save(model, tmp_path / "ok.pt")
    payload = torch.load(tmp_path / "ok.pt", weights_only=True)
    for key, value in changes.items():
        if value is None:
            del payload[key]
        else:
            payload[key] = value
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"arch": None}, r"bad.pt: an incomplete carmask checkpoint \(no arch\)"),
        ({"state_dict": None}, r"bad.pt: an incomplete carmask checkpoint \(no state_dict\)"),
        (
            {"arch_kwargs": {"width": 8, "depth": 2}},
            r"bad.pt: its weights do not fit a unet .*net.down.0.0.weight is 4x3x3x3, expected 8x3x3x3",
        ),
        (
            {"spec": InputSpec(("rgb", "mean_diff"), size=(32, 32)).to_dict()},
            r"bad.pt: its weights do not fit .* on 6 input channels",
        ),
        ({"arch": "transformer"}, r"bad.pt: unknown architecture 'transformer'"),
        ({"arch_kwargs": {"width": 4, "depth": 2, "heads": 8}}, r"bad.pt: unet takes width, depth"),
        ({"arch_kwargs": {"width": 4096, "depth": 4}}, r"bad.pt: unet width=4096 is outside 1..256"),
        ({"spec": {"channels": ["rgb"], "size": [100000, 100000]}}, r"bad.pt: input size .* is outside"),
        ({"spec": "not a spec"}, r"bad.pt: unreadable input spec"),
    ],
)
def test_a_bad_checkpoint_gets_a_sentence_naming_the_file(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        models.load(checkpoint(tmp_path, **changes))


def test_a_huge_architecture_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    """A 2.9 KB checkpoint asking for a U-Net of width 4096 (or within the width
    bound but over the parameter bound) is refused with no real network built."""
    built = []

    class Watched(models.UNet):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(next(self.parameters()).device.type)

    for kwargs, message in [
        ({"width": 4096, "depth": 4}, "width=4096 is outside"),
        ({"width": 256, "depth": 7}, "parameters, over the limit"),
    ]:
        path = checkpoint(tmp_path, arch_kwargs=kwargs, state_dict={})
        assert path.stat().st_size < 4000
        with monkeypatch.context() as patch:
            patch.setitem(models.ARCHITECTURES, "unet", Watched)
            with pytest.raises(ValueError, match=f"bad.pt: .*{message}"):
                models.load(path)
    assert all(device == "meta" for device in built)


def test_checkpoints_are_written_0644_under_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        models.save(models.Segmenter("seed", InputSpec(("rgb",), size=(8, 8))), tmp_path / "m.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "m.pt").stat().st_mode & 0o777 == 0o644


def test_the_cli_names_a_bad_checkpoint_in_a_sentence(tmp_path, synth_data):
    from helpers import run_cli

    bad = checkpoint(tmp_path, arch_kwargs={"width": 8, "depth": 2})
    result = run_cli("predict", synth_data / "test", "-o", tmp_path / "s.csv", "--model", bad)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{bad}: its weights do not fit a unet" in " ".join(result.output.split())
    assert not (tmp_path / "s.csv").exists()

import pickle

import pytest
import torch

from carmask import models
from carmask.views import InputSpec

CASES = [("seed", {}), ("unet", {"width": 4, "depth": 2}), ("unet", {"width": 4, "depth": 3})]


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
    with pytest.raises(ValueError, match="not a loadable carmask checkpoint"):
        models.load(evil)
    assert "must never run" not in capsys.readouterr().out


def test_unknown_names_and_junk_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shipped model named"):
        models.load("no-such-model")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError):
        models.load(junk)


def test_shipped_models_load_and_run():
    """Every shipped model loads safely and predicts at any photo size."""
    import numpy as np

    from carmask.predict import Predictor
    assert "seed" in models.shipped()
    rng = np.random.default_rng(0)
    views = [rng.integers(0, 255, (96, 144, 3), dtype=np.uint8) for _ in range(4)]
    for name in models.shipped():
        model, meta = models.load(name)
        assert meta["val_dice"] > 0.9
        probs = Predictor(name, device="cpu").predict_photo(views[0], views=views[1:])
        assert probs.shape == (96, 144) and 0 <= probs.min() <= probs.max() <= 1

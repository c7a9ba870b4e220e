"""The learned edge refiner in the one path: the predictor runs it for every
prediction (API, predict, cutout, evaluate, the service), and one photo as a
file, bytes or an array still gives one mask."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch
from PIL import Image

from carmask import rle
from carmask.models import refiner as rf
from carmask.models import refiner_frames
from carmask.predict import Predictor
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def refiner_file(tmp_path_factory):
    """A small tile refiner that moves the outline (a fresh one is the identity)."""
    torch.manual_seed(7)
    refiner = rf.TileRefiner(channels=8, dilations=(1, 2), tile=32)
    torch.nn.init.normal_(refiner.head.weight, std=0.5)
    path = tmp_path_factory.mktemp("refiner") / "edge.pt"
    rf.save(refiner, path)
    return path


MODEL = "rgb-fast"  # shipped: sure of itself away from the outline, as the refiner expects


@pytest.fixture(scope="module")
def refined(refiner_file):
    with Predictor(MODEL, device="cpu", refiner=refiner_file) as predictor:
        yield predictor


def test_the_refiner_moves_the_outline_and_one_photo_gives_one_mask(refined, synth_view):
    path, _ = synth_view
    array = np.asarray(Image.open(path).convert("RGB"))
    probs = [refined.predict_photo(source) for source in (path, path.read_bytes(), array, Image.open(path))]
    assert all(np.array_equal(probs[0], p) for p in probs[1:])
    plain = Predictor(MODEL, device="cpu", refiner="none").predict_photo(path)
    assert probs[0].shape == plain.shape
    changed = (probs[0] > 0.5) != (plain > 0.5)
    assert changed.any() and changed.mean() < 0.05  # the band around the outline only


@pytest.mark.parametrize("sets", ["auto", "never"])
def test_the_refiner_sees_a_set_whole_and_a_photo_alone(refiner_file, synth_data, monkeypatch, sets):
    """The seam hands the refiner each photo at 512x512 with the views of its
    set (whose studio it takes) or alone (its own estimate of the studio)."""
    seen, real = [], refiner_frames.refine_frames

    def spy(refiner, photos, probs, views, tta=False):
        seen.append((tuple(photos.shape), tuple(probs.shape), views, tta))
        return real(refiner, photos, probs, views, tta)

    monkeypatch.setattr(refiner_frames, "refine_frames", spy)
    views = sorted((synth_data / "train").glob("*.jpg"))[:8]
    for tta in (False, True):  # the shipped fast tier; with TTA the refiner mirrors its tiles too
        with Predictor(device="cpu", refiner=refiner_file, sets=sets, tta=tta) as predictor:
            out = predictor.predict_views([(p.name, p) for p in views])
        assert all(p.error is None and p.probs.shape == (128, 192) for p in out)
    together = [list(range(8))] * 8 if sets == "auto" else [[i] for i in range(8)]
    assert seen == [((8, 3, 512, 512), (8, 512, 512), together, tta) for tta in (False, True)]


def test_predict_writes_the_refined_masks_and_a_resume_knows_the_refiner(refined, refiner_file, synth_view, tmp_path):
    path, _ = synth_view
    out = tmp_path / "sub.csv"
    result = run_cli("predict", path, "-o", out, "--model", MODEL, "--refiner", refiner_file, "--device", "cpu")
    assert result.exit_code == 0, result.output
    [row] = list(csv.DictReader(out.open()))
    assert row["rle_mask"] == rle.encode(refined.predict_photo(path) > 0.5)
    record = tmp_path / "sub.csv.partial.json"
    assert not record.exists()  # published whole


def test_cutout_and_the_service_use_the_refiner(refined, refiner_file, synth_view, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from carmask.serve import create_app

    path, _ = synth_view
    source = tmp_path / "car_05.jpg"
    source.write_bytes(path.read_bytes())
    for out, refiner in (("plain", ["--refiner", "none"]), ("refined", ["--refiner", refiner_file])):
        result = run_cli("cutout", source, "-o", tmp_path / out, "--model", MODEL, *refiner, "--device", "cpu")
        assert result.exit_code == 0, result.output
    written = np.asarray(Image.open(tmp_path / "refined" / "car_05.png"))
    assert not np.array_equal(written, np.asarray(Image.open(tmp_path / "plain" / "car_05.png")))
    with TestClient(create_app(refined)) as client:
        response = client.post("/api/cutout", files={"file": ("car_05.jpg", path.read_bytes(), "image/jpeg")})
    assert response.status_code == 200
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(response.content))), written)


def test_a_refiner_that_is_not_there_is_one_sentence(synth_view, tmp_path):
    path, _ = synth_view
    for verb in (["predict", path, "-o", tmp_path / "x.csv"], ["cutout", path, "-o", tmp_path / "out"]):
        result = run_cli(*verb, "--model", MODEL, "--refiner", "no-such-refiner", "--device", "cpu")
        assert result.exit_code == 2 and "no shipped refiner named 'no-such-refiner'" in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "out").exists()


def test_the_shipped_refiner_runs_by_default_after_the_fast_tier_and_none_turns_it_off(synth_view, tmp_path):
    assert Predictor(device="cpu").refiner == "edge-refiner-fast"  # the shipped defaults: the fast tier
    assert Predictor("multiview", device="cpu").refiner == "edge-refiner-fast"
    assert Predictor("seed", device="cpu").refiner is None  # made for no other model
    assert Predictor(MODEL, device="cpu", refiner="none").refiner is None
    path, _ = synth_view
    rows = {}
    options = {"default": [], "named": ["--refiner", "edge-refiner-fast"], "none": ["--refiner", "none"]}
    for label, option in options.items():
        out = tmp_path / f"{label}.csv"
        result = run_cli("predict", path, "-o", out, "--model", MODEL, *option, "--device", "cpu")
        assert result.exit_code == 0, result.output
        [row] = list(csv.DictReader(out.open()))
        rows[label] = row["rle_mask"]
    plain = Predictor(MODEL, device="cpu", refiner=None).predict_photo(path)
    assert rows["default"] == rows["named"] != rows["none"] == rle.encode(plain > 0.5)

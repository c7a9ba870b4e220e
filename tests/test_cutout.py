"""`remove()` and `carmask cutout`: inputs of every kind, names that never collide, honest summaries."""

import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import mirrored_share, run_cli
from PIL import Image

from carmask.cutout import remove, remove_set
from carmask.io import ImageError, read_photo
from carmask.predict import Predictor


@pytest.fixture(scope="module")
def photo_path(synth_view):
    return synth_view[0]


def test_remove_takes_a_path_bytes_an_array_or_a_pil_image(rgb_predictor, photo_path):
    array = np.asarray(Image.open(photo_path).convert("RGB"))
    results = [
        remove(source, rgb_predictor)
        for source in (photo_path, str(photo_path), photo_path.read_bytes(), array, Image.open(photo_path))
    ]
    for rgba in results:
        assert rgba.shape == (*array.shape[:2], 4) and rgba.dtype == np.uint8
    assert all(np.array_equal(results[0], r) for r in results[1:])
    assert remove(array, rgb_predictor, "mask").ndim == 2
    assert remove(array, rgb_predictor, "0,185,0", refine=False).shape == array.shape


@pytest.mark.parametrize("size", [(1, 1), (2, 300), (300, 2)])
def test_photos_one_or_two_pixels_thin_are_cut_out(rgb_predictor, size):
    """The edge refinement has no slope across a side 1-2 pixels long (it crashed)."""
    noise = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    assert remove(noise, rgb_predictor).shape == (*size, 4)


@pytest.mark.parametrize(
    "bad, named",
    [
        (b"not a photo", "<upload>"),
        (np.full((4, 4), 2.0, np.float32), "<array>"),
        (42, "int"),
        ("missing.jpg", "missing.jpg"),
    ],
)
def test_remove_errors_name_the_input(rgb_predictor, bad, named):
    with pytest.raises(ImageError) as caught:
        remove(bad, rgb_predictor)
    assert named in str(caught.value)


def test_one_view_given_as_views_is_a_sentence_not_a_misreading(rgb_predictor, photo_path):
    array = np.asarray(Image.open(photo_path).convert("RGB"))
    with pytest.raises(TypeError, match=r"give one view as \[view\]"):
        remove(array, rgb_predictor, views=array)  # was read as one view per row


def test_background_arrays_are_read_as_photos(rgb_predictor, photo_path):
    """A grey H x W or float 0..1 background is the same background as its uint8 RGB."""
    grey = np.linspace(0, 255, 40 * 60).reshape(40, 60).astype(np.uint8)
    expected = remove(photo_path, rgb_predictor, np.dstack([grey] * 3))
    assert np.array_equal(remove(photo_path, rgb_predictor, grey), expected)  # was a broadcast error
    assert np.array_equal(remove(photo_path, rgb_predictor, grey / 255.0), expected)  # was black
    assert np.array_equal(remove(photo_path, rgb_predictor, Image.fromarray(grey)), expected)


def test_remove_set_reports_each_view(seed_model, synth_data):
    views = sorted((synth_data / "test").glob("*.jpg"))[:4]
    items = [(p.name, p.read_bytes()) for p in views] + [("broken_09.jpg", b"junk")]
    results = {r.name: r for r in remove_set(items, Predictor(model=seed_model, device="cpu"))}
    assert list(results) == [name for name, _ in items]
    assert all(results[p.name].image.shape == (128, 192, 4) and results[p.name].error is None for p in views)
    assert isinstance(results["broken_09.jpg"].error, ImageError) and results["broken_09.jpg"].image is None
    assert read_photo(Image.new("L", (3, 2))).shape == (2, 3, 3)


def test_two_inputs_with_one_name_get_two_outputs_in_their_folders(rgb_model, photo_path, tmp_path):
    """They were car_01.jpg.png and car_01.jpg-2.png: nothing said which was which."""
    for folder in ("dupA", "dupB"):
        (tmp_path / folder).mkdir()
        shutil.copy(photo_path, tmp_path / folder / "car_01.jpg")
    out = tmp_path / "out"
    result = run_cli(
        "cutout", tmp_path / "dupA" / "car_01.jpg", tmp_path / "dupB" / "car_01.jpg", "-o", out, "--model", rgb_model
    )
    assert result.exit_code == 0, result.output
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == ["dupA/car_01.png", "dupB/car_01.png"]
    assert "wrote 2 cut-out(s)" in result.stderr
    again = run_cli(
        "cutout", tmp_path / "dupA" / "car_01.jpg", tmp_path / "dupB" / "car_01.jpg", "-o", out, "--model", rgb_model
    )
    assert again.exit_code == 0 and "wrote 0 cut-out(s)" in again.stderr and "kept 2 existing" in again.stderr


def test_masks_are_named_mask_beside_earlier_cutouts(rgb_model, photo_path, tmp_path):
    out = tmp_path / "out"
    assert run_cli("cutout", photo_path, "-o", out, "--model", rgb_model).exit_code == 0
    result = run_cli("cutout", photo_path, "-o", out, "--bg", "mask", "--model", rgb_model)
    assert result.exit_code == 0 and "wrote 1 cut-out(s)" in result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"{photo_path.stem}.png", f"{photo_path.stem}_mask.png"]
    assert Image.open(out / f"{photo_path.stem}_mask.png").mode == "L"


def test_skipped_inputs_exit_1_and_are_counted(rgb_model, photo_path, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    result = run_cli("cutout", photo_path, tmp_path / "broken.jpg", "-o", tmp_path / "out", "--model", rgb_model)
    assert result.exit_code == 1
    assert "broken.jpg" in result.stderr and "1 photo(s) skipped" in result.stderr
    assert "wrote 1 cut-out(s)" in result.stderr
    assert "Exit status" in run_cli("cutout", "--help").output


def test_stdin_to_stdout(rgb_model, photo_path, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-m", "carmask", "cutout", "-", "-o", "-", "--model", str(rgb_model)],
        input=photo_path.read_bytes(),
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()
    image = Image.open(io.BytesIO(done.stdout))
    assert image.format == "PNG" and image.mode == "RGBA" and image.size == (192, 128)
    assert b"progress" not in done.stderr and b"\r" not in done.stderr  # no bar outside a terminal


def test_outputs_are_created_0644_under_the_umask(rgb_model, photo_path, tmp_path):
    old = os.umask(0o022)
    try:
        assert run_cli("cutout", photo_path, "-o", tmp_path / "out", "--model", rgb_model).exit_code == 0
    finally:
        os.umask(old)
    [made] = (tmp_path / "out").iterdir()
    assert made.stat().st_mode & 0o777 == 0o644


def test_tta_option(rgb_model, photo_path, tmp_path, network_inputs):
    """--tta runs the network on the mirrored photo too: every input it sees has its mirror
    image beside it; without --tta none has."""
    result = run_cli("cutout", photo_path, "-o", tmp_path / "a.png", "--tta", "--model", rgb_model)
    assert result.exit_code == 0 and (tmp_path / "a.png").is_file()
    assert mirrored_share(network_inputs) == 1
    network_inputs.clear()
    assert run_cli("cutout", photo_path, "-o", tmp_path / "b.png", "--model", rgb_model).exit_code == 0
    assert mirrored_share(network_inputs) == 0


def test_serve_without_the_extra_says_so(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    result = run_cli("serve")
    assert result.exit_code == 2 and "pip install 'carmask[serve]'" in result.output
    assert "Traceback" not in result.output


def test_warnings_are_shown_once_and_sets_can_be_declined(synth_data, tmp_path):
    """A car with 2 views is cut out photo by photo with a warning, said once
    (as predict says it); --sets never predicts every photo alone, as asked, without one."""
    views = sorted((synth_data / "test").glob("*.jpg"))[:2]
    for i, view in enumerate(views, 1):
        shutil.copy(view, tmp_path / f"pair_{i:02d}.jpg")
    result = run_cli("cutout", tmp_path / "pair_01.jpg", tmp_path / "pair_02.jpg", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("2 readable views") == 1  # said once for the car, and counted in the summary
    assert "warning: 1 car with views predicted photo by photo" in result.stderr
    alone = run_cli(
        "cutout",
        tmp_path / "pair_01.jpg",
        tmp_path / "pair_02.jpg",
        "-o",
        tmp_path / "out2",
        "--sets",
        "never",
        "--no-refine",
    )
    assert alone.exit_code == 0 and "warning:" not in alone.stderr and len(list((tmp_path / "out2").iterdir())) == 2
    assert run_cli("cutout", views[0], "-o", tmp_path / "o3", "--sets", "sometimes").exit_code == 2

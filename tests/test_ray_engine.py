"""`carmask predict --engine ray` on a local Ray instance and synthetic cars:
the same file as the single-process run, bad photos skipped and named, resumable."""

import shutil
import sys

import pytest

ray = pytest.importorskip("ray")


from helpers import interrupted_run, partial_of  # noqa: E402
from helpers import run_cli as run  # noqa: E402

import carmask  # noqa: E402
from carmask import ray_engine  # noqa: E402
from carmask.models import WEIGHTS_DIR  # noqa: E402

pytestmark = pytest.mark.slow  # the quick run (-m "not slow") leaves this module out


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module (each start takes seconds); the CLI joins it."""
    assert ray_engine._connect(None)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(synth_data):
    return synth_data / "train"  # 6 cars x 16 views


@pytest.fixture(scope="module")
def local_csv(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "local.csv"
    assert run("predict", photos, "-o", out).exit_code == 0
    return out


def test_workers_import_this_carmask(local_ray):
    assert ray.get(ray.remote(lambda: __import__("carmask").__file__).remote()) == carmask.__file__


def test_ray_gives_the_single_process_file(local_ray, photos, local_csv, tmp_path, monkeypatch):
    # One car per call over two actors: calls finish out of order, rows must not.
    monkeypatch.setattr(ray_engine, "CARS_PER_CALL", 1)
    out = tmp_path / "ray.csv"
    result = run("predict", photos, "-o", out, "--engine", "ray", "--actors", 2)
    assert result.exit_code == 0, result.output
    assert out.read_text() == local_csv.read_text()
    assert len(out.read_text().splitlines()) == 97
    assert not out.with_name(out.name + ".partial").exists()


def test_bad_photos_are_skipped_and_named_as_in_a_local_run(local_ray, photos, tmp_path, monkeypatch):
    bad = tmp_path / "photos"
    shutil.copytree(photos, bad)
    victim = sorted(bad.iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:300])  # truncated JPEG
    (bad / "notes_01.jpg").write_text("not a photo")
    for view, photo in zip(("01", "02"), sorted(photos.iterdir())):  # too few views for a background
        shutil.copy(photo, bad / f"lone_{view}.jpg")
    # A checkpoint named relative to this folder: the actors run elsewhere.
    monkeypatch.chdir(WEIGHTS_DIR)
    outs = {engine: tmp_path / f"{engine}.csv" for engine in ("local", "ray")}
    for engine, out in outs.items():
        result = run("predict", bad, "-o", out, "--model", "seed.pt", "--engine", engine, "--actors", 1)
        assert result.exit_code == 1, result.output
        for name in (victim.name, "notes_01.jpg", "lone_01.jpg", "lone_02.jpg"):
            assert f"skipped {bad / name}: " in result.stderr
        assert "4 photo(s) skipped" in result.stderr
    assert len(outs["ray"].read_text().splitlines()) == 1 + 95
    assert outs["ray"].read_text() == outs["local"].read_text()


def test_resume_completes_to_the_same_file(local_ray, photos, local_csv, tmp_path):
    # A run killed mid-row: two whole cars and part of the third, then half a row.
    lines = local_csv.read_text().splitlines(keepends=True)
    out = tmp_path / "resumed.csv"
    interrupted_run(39, "predict", photos, "-o", out)
    with open(partial_of(out), "a") as f:
        f.write(lines[40][:20])
    result = run("predict", photos, "-o", out, "--engine", "ray", "--actors", 1, "-v")
    assert result.exit_code == 0, result.output
    assert "resuming: 39 rows" in result.stderr
    assert "64 photos in 4 sets to predict" in result.stderr  # the two finished cars are not sent again
    assert "96 rows (57 predicted now, 39 kept from the interrupted run)" in result.stderr
    assert out.read_text() == local_csv.read_text()


def test_without_ray_the_error_says_what_to_install(photos, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    result = run("predict", photos, "-o", tmp_path / "s.csv", "--engine", "ray")
    assert result.exit_code == 2 and "pip install 'carmask[ray]'" in result.output
    assert not (tmp_path / "s.csv.partial").exists()


def test_cuda_on_a_cluster_without_gpus_is_a_usage_error(local_ray, photos, tmp_path):
    if ray.cluster_resources().get("GPU"):
        pytest.skip("this Ray instance has a GPU")
    result = run("predict", photos, "-o", tmp_path / "s.csv", "--engine", "ray", "--device", "cuda")
    assert result.exit_code == 2 and "the Ray cluster has no GPU" in result.output
    assert ray.is_initialized()  # the caller's Ray session is left as it was


def test_sets_and_warnings_travel_as_in_a_local_run(local_ray, photos, tmp_path):
    """--sets reaches every actor's predictor, and each car's warning comes back once."""
    mixed = tmp_path / "photos"
    mixed.mkdir()
    views = sorted(photos.iterdir())
    for view in views[:2] + views[16:32]:  # a car with 2 views, a car with 16
        shutil.copy(view, mixed / view.name)
    car = views[0].name.rsplit("_", 1)[0]
    for sets in ("auto", "never"):
        outs = {engine: tmp_path / f"{engine}-{sets}.csv" for engine in ("local", "ray")}
        for engine, out in outs.items():
            result = run("predict", mixed, "-o", out, "--sets", sets, "--engine", engine, "--actors", 1)
            assert result.exit_code == 0, result.output
            said = 1 if sets == "auto" else 0  # once for the car, and in the summary
            assert result.stderr.count("2 readable views") == said
            assert result.stderr.count(f"predicted photo by photo with the single-photo model: {car}") == said
        assert outs["ray"].read_text() == outs["local"].read_text()
    assert (tmp_path / "ray-auto.csv").read_text() != (tmp_path / "ray-never.csv").read_text()

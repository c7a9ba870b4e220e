"""`carmask cutout` refuses, before any work, outputs it could not write or should not."""

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "in" / "car.jpg"
    path.parent.mkdir()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(path)
    return path


def test_a_transparent_cutout_into_a_jpeg_is_refused_before_any_work(photo, tmp_path):
    result = run_cli("cutout", photo, "-o", tmp_path / "out.jpg")
    assert result.exit_code == 2 and "JPEG has no transparency" in result.output
    assert not (tmp_path / "out.jpg").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("-o", "{photo}", "--bg", "green", "--overwrite"),
        ("-o", "{folder}", "--bg", "green", "--overwrite"),
        ("-o", "{folder}", "--bg", "green"),
    ],
)
def test_a_cutout_never_replaces_its_own_photo(photo, args):
    before = photo.read_bytes()
    result = run_cli("cutout", photo, *[a.format(photo=photo, folder=photo.parent) for a in args])
    assert result.exit_code == 2, result.output
    assert f"{photo} is one of the input photos: the output would replace it" in result.stderr
    assert photo.read_bytes() == before


def test_a_rerun_with_the_output_inside_the_inputs_leaves_earlier_cutouts_out(photo):
    """`cutout in -r -o in/cut` twice: the second run cut out the first run's cut-outs (car.png.png)."""
    out = photo.parent / "cut"
    assert run_cli("cutout", photo.parent, "-r", "-o", out).exit_code == 0  # the first run
    result = run_cli("cutout", photo.parent, "-r", "-o", out)
    assert result.exit_code == 0, result.output
    assert "left out 1 image(s) in " in result.stderr and "made by an earlier run: car.png" in result.stderr
    assert "kept 1 existing" in result.stderr and sorted(p.name for p in out.iterdir()) == ["car.png"]


def test_an_image_name_for_several_photos_is_a_usage_error(photo, tmp_path):
    """-o two.png for two photos made a folder named two.png."""
    other = photo.with_name("other.jpg")
    other.write_bytes(photo.read_bytes())
    result = run_cli("cutout", photo, other, "-o", tmp_path / "two.png")
    assert result.exit_code == 2 and "names one image, but 2 photos were given: name a folder" in result.output
    assert not (tmp_path / "two.png").exists()


@pytest.mark.parametrize("name", ["out.gif", "out.tif"])
def test_an_image_name_cutout_does_not_write_is_a_usage_error(photo, tmp_path, name):
    """-o out.gif made a folder named out.gif."""
    result = run_cli("cutout", photo, "-o", tmp_path / name)
    assert result.exit_code == 2 and "cut-outs are written as .png, .jpg, .jpeg, .webp" in result.output
    assert not (tmp_path / name).exists()


def test_an_output_ending_in_a_slash_is_a_folder(photo, tmp_path):
    """-o out.png/ was taken for a file name (and refused as a folder's name)."""
    result = run_cli("cutout", photo, "-o", f"{tmp_path}/out.png/", "--bg", "mask")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out.png").iterdir()) == ["car_mask.png"]


def test_an_existing_output_folder_on_a_read_only_disk_is_refused_before_any_work(photo, tmpfs, monkeypatch):
    """It predicted everything, then said 'skipped (Read-only file system)' for each photo."""
    from carmask import predict

    disk = tmpfs("64k", readonly=True)  # the folder itself; the one above it is writable
    monkeypatch.setattr(predict.Predictor, "predict_sets", lambda *a, **k: pytest.fail("work began"))
    result = run_cli("cutout", photo, "-o", disk)
    assert result.exit_code == 2, result.output
    assert f"cannot write in {disk}: Read-only file system" in result.stderr


def test_a_photo_name_that_fits_gets_a_cutout_whose_temporary_name_fits_too(photo, tmp_path):
    """A 243-255 byte photo name: 'File name too long' for the cut-out's temporary file."""
    long = photo.with_name("c" * 251 + ".jpg")
    photo.rename(long)
    result = run_cli("cutout", long, "-o", tmp_path / "cut")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "cut").iterdir()] == ["c" * 251 + ".png"]  # 255 bytes


def big_photo(path):
    """A photo whose cut-out PNG is far larger than a pipe's buffer (64 KiB)."""
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    return path


@pytest.mark.slow
def test_a_closed_pipe_on_standard_output_is_an_error(tmp_path):
    """`cutout photo.jpg -o - | head -c 10`: 64 KiB of 738 KB written, 'wrote 1 cut-out(s)', exit 0."""
    import subprocess
    import sys

    photo = big_photo(tmp_path / "car.png")
    run = subprocess.Popen(
        [sys.executable, "-m", "carmask", "cutout", str(photo), "-o", "-", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert len(run.stdout.read(10)) == 10
    run.stdout.close()  # as head does
    stderr = run.stderr.read().decode()
    assert run.wait() == 2, stderr
    assert stderr.strip() == "carmask: cannot write standard output: Broken pipe"


@pytest.mark.slow
def test_a_full_standard_output_is_an_error(tmp_path):
    """`cutout photo.jpg -o - > /dev/full`: exit 1, 'skipped'; predict says exit 2."""
    import os
    import subprocess
    import sys

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    photo = big_photo(tmp_path / "car.png")
    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [sys.executable, "-m", "carmask", "cutout", str(photo), "-o", "-", "--device", "cpu"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "carmask: cannot write standard output: No space left on device"


def test_a_broken_link_or_a_pipe_in_a_folder_is_named_not_dropped(photo, tmp_path):
    """No cut-out, no message: the run was short without a word."""
    import os

    os.symlink(tmp_path / "nowhere.jpg", photo.parent / "gone.jpg")
    os.mkfifo(photo.parent / "pipe.jpg")
    result = run_cli("cutout", photo.parent, "-o", tmp_path / "cut")
    assert result.exit_code == 1, result.output
    assert f"skipped {photo.parent / 'gone.jpg'}: no such file" in result.stderr
    assert f"skipped {photo.parent / 'pipe.jpg'}: not a regular file" in result.stderr
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["car.png"]


def test_a_users_own_png_beside_the_photos_is_a_photo_never_an_output(photo):
    """`cutout FOLDER -o FOLDER` holding car.jpg and the user's car.png: car.png
    was taken for an earlier cut-out and never cut out; with --overwrite, replaced."""
    own = photo.with_name("car.png")
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(own)
    before = own.read_bytes()
    for args, left_out in (((), "wrote 2"), (("--overwrite",), "left out 2 image(s) in ")):
        result = run_cli("cutout", photo.parent, "-o", photo.parent, *args)
        assert result.exit_code == 0, result.output
        assert result.stderr.startswith(left_out) and own.read_bytes() == before
        assert sorted(p.name for p in photo.parent.iterdir()) == ["car.jpg", "car.jpg.png", "car.png", "car.png.png"]
    assert "made by an earlier run: car.jpg.png, car.png.png" in result.stderr  # the cut-outs, not car.png


def test_photos_in_sub_folders_are_cut_out_into_the_same_sub_folders(photo, tmp_path):
    """-r over a/photo.jpg and b/photo.jpg gave photo.jpg_mask.png and
    photo.jpg-2_mask.png: nothing said which was which."""
    for sub in ("a", "b/c"):
        (photo.parent / sub).mkdir(parents=True)
        (photo.parent / sub / "photo.jpg").write_bytes(photo.read_bytes())
    out = tmp_path / "cut"
    result = run_cli("cutout", photo.parent, "-r", "-o", out, "--bg", "mask")
    assert result.exit_code == 0, result.output
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == [
        "a/photo_mask.png",
        "b/c/photo_mask.png",
        "car_mask.png",
    ]
    again = run_cli("cutout", photo.parent, "-r", "-o", out, "--bg", "mask")
    assert "kept 3 existing" in again.stderr


def test_a_cutout_another_run_wrote_meanwhile_is_kept_not_replaced(photo, tmp_path, monkeypatch):
    """Two cutout runs into one folder at once both said 'wrote 16', each
    replacing the other's files without --overwrite."""
    from carmask.cli import cutout

    save, out = cutout._save, tmp_path / "cut"

    def another_run_first(path, image, replace):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"the other run's cut-out")
        save(path, image, replace)

    monkeypatch.setattr(cutout, "_save", another_run_first)
    result = run_cli("cutout", photo, "-o", out)
    assert result.exit_code == 0, result.output
    assert "wrote 0 cut-out(s)" in result.stderr and "kept 1 existing" in result.stderr
    assert (out / "car.png").read_bytes() == b"the other run's cut-out" and len(list(out.iterdir())) == 1


@pytest.mark.slow
def test_two_cutout_runs_at_once_write_each_file_once(tmp_path):
    import re
    import subprocess
    import sys

    from carmask.synth import make_dataset

    photos = make_dataset(tmp_path / "cars", cars=2, size=(96, 64), seed=8) / "train"
    command = [
        sys.executable,
        "-m",
        "carmask",
        "cutout",
        str(photos),
        "-o",
        str(tmp_path / "cut"),
        "--model",
        "seed",
        "--device",
        "cpu",
    ]
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(run.wait(), run.stderr.read()) for run in runs]
    assert [status for status, _ in outcomes] == [0, 0], outcomes
    written = [int(re.search(r"wrote (\d+) cut-out", stderr)[1]) for _, stderr in outcomes]
    assert sum(written) == 32 and len(list((tmp_path / "cut").iterdir())) == 32, outcomes

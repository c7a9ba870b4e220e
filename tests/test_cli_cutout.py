"""`carmask cutout` refuses, before any work, outputs it could not write or should not."""
import numpy as np
import pytest
from PIL import Image

from helpers import run_cli


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


@pytest.mark.parametrize("args", [("-o", "{photo}", "--bg", "green", "--overwrite"),
                                  ("-o", "{folder}", "--bg", "green", "--overwrite"),
                                  ("-o", "{folder}", "--bg", "green")])
def test_a_cutout_never_replaces_its_own_photo(photo, args):
    before = photo.read_bytes()
    result = run_cli("cutout", photo, *[a.format(photo=photo, folder=photo.parent) for a in args])
    assert result.exit_code == 2, result.output
    assert f"{photo} is one of the input photos: the output would replace it" in result.stderr
    assert photo.read_bytes() == before



def test_a_rerun_with_the_output_inside_the_inputs_leaves_earlier_cutouts_out(photo):
    """`cutout in -r -o in/cut` twice: the second run cut out the first run's cut-outs (car.png.png)."""
    out = photo.parent / "cut"
    out.mkdir()
    Image.new("RGBA", (8, 8)).save(out / "car.png")  # the first run's cut-out
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

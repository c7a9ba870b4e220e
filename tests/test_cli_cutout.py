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


import io

import numpy as np
import pytest
from PIL import Image

from carmask.io import ImageError, find_photos, parse_size, read_mask, read_photo
from carmask.kaggle import group_by_car, parse_view_name


def jpeg_bytes(array, **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", **params)
    return buffer.getvalue()


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)


def test_names_and_grouping(tmp_path):
    assert parse_view_name("00087a6bd4dc_07.jpg") == ("00087a6bd4dc", 7)
    assert parse_view_name("holiday.jpg") is None
    for name in ["b_02.jpg", "b_01.jpg", "a_01.jpg", "a_02.jpg", "a_03.jpg", "solo.png", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    photos = find_photos([tmp_path])
    assert [p.name for p in photos] == ["a_01.jpg", "a_02.jpg", "a_03.jpg", "b_01.jpg", "b_02.jpg", "solo.png"]
    sets = group_by_car(photos)
    assert [(s.car, [p.name for p in s.paths]) for s in sets] == [
        ("a", ["a_01.jpg", "a_02.jpg", "a_03.jpg"]),
        ("b", ["b_01.jpg", "b_02.jpg"]),
        (None, ["solo.png"]),
    ]
    assert [p.name for p in find_photos([str(tmp_path / "a_*.jpg")])] == ["a_01.jpg", "a_02.jpg", "a_03.jpg"]


def test_a_symlink_loop_gives_each_photo_once(tmp_path):
    """`carmask predict 'dir/**/*.jpg' -r` over a link to a parent folder met
    the photo at every depth down to the system's limit (40 paths, one name)."""
    (tmp_path / "sub").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "sub" / "a.jpg")
    (tmp_path / "sub" / "up").symlink_to("..")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "sub" / "a.jpg")  # another name: another photo
    for inputs in ([f"{tmp_path}/**/*.jpg"], [tmp_path]):
        assert find_photos(inputs, recursive=True) == [tmp_path / "b.jpg", tmp_path / "sub" / "a.jpg"]


def test_parse_size():
    assert parse_size("1918x1280") == (1918, 1280)
    with pytest.raises(ValueError):
        parse_size("1918by1280")
    with pytest.raises(ValueError, match="100000x100000 is not between 1x1 and 64,000,000 pixels"):
        parse_size("100000x100000")  # it would have asked for 40 GB in the middle of a run


def test_predictor_refuses_sizes_and_batches_it_cannot_make():
    from carmask.predict import Predictor

    with pytest.raises(ValueError, match="batch size and workers must be at least 1, not 0 and None"):
        Predictor(batch_size=0)
    with pytest.raises(ValueError, match="must be at least 1, not 16 and -1"):
        Predictor(workers=-1)  # was a ThreadPoolExecutor error at the first photo
    photo = np.zeros((8, 8, 3), np.uint8)
    for size in [(0, 5), (100_000, 100_000), "ab"]:
        with pytest.raises(ValueError, match="size"):
            Predictor().predict_photo(photo, output_size=size)


def test_reads_rgb_jpeg(tmp_path, photo):
    path = tmp_path / "car_01.jpg"
    path.write_bytes(jpeg_bytes(photo, quality=100))
    out = read_photo(path)
    assert out.shape == photo.shape and out.dtype == np.uint8


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty"),
        (b"this is not a photo at all", "not a readable image"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path, content, reason):
    path = tmp_path / "car_01.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason) as info:
        read_photo(path)
    assert str(path) in str(info.value)


def test_truncated_jpeg_is_a_clear_error(tmp_path, photo):
    path = tmp_path / "cut_01.jpg"
    path.write_bytes(jpeg_bytes(photo)[:400])
    with pytest.raises(ImageError, match="cut_01.jpg"):
        read_photo(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        read_photo(tmp_path / "nope.jpg")


def test_decompression_bomb_is_refused_before_decoding():
    buffer = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buffer, "PNG")  # 81 Mpx that compress to almost nothing
    with pytest.raises(ImageError, match="pixels"):
        read_photo(buffer.getvalue(), name="bomb.png")


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16"])
def test_other_modes_become_rgb(mode, photo):
    if mode == "I;16":
        image = Image.fromarray(photo[..., 0].astype(np.uint16) * 257)
    else:
        image = Image.fromarray(photo).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "TIFF" if mode == "CMYK" else "PNG")
    out = read_photo(buffer.getvalue(), name=f"photo.{mode}")
    assert out.shape == photo.shape and out.dtype == np.uint8
    if mode == "I;16":  # 16-bit scaled down, not clipped
        assert abs(int(out[..., 0].astype(int).mean()) - int(photo[..., 0].mean())) <= 1


def exif_rotated_jpeg(photo: np.ndarray, orientation: int = 6) -> bytes:
    image = Image.fromarray(photo)
    exif = image.getexif()
    exif[0x0112] = orientation  # 6: turn 90 degrees clockwise to view
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def test_exif_orientation_upright_or_stored_grid(photo):
    data = exif_rotated_jpeg(photo)  # stored 90 wide, 60 high
    upright, stored = read_photo(data), read_photo(data, upright=False)
    assert upright.shape == (90, 60, 3) and stored.shape == (60, 90, 3)
    assert np.array_equal(np.rot90(stored, -1), upright)  # orientation 6: clockwise to view


def test_arrays_and_pil_images_are_photos_too(photo):
    assert read_photo(photo) is photo or np.array_equal(read_photo(photo), photo)
    assert np.array_equal(read_photo(Image.fromarray(photo)), photo)
    assert np.array_equal(read_photo(photo[..., 0]), np.repeat(photo[..., :1], 3, axis=-1))  # grey
    rgba = np.dstack([photo, np.full(photo.shape[:2], 7, np.uint8)])
    assert np.array_equal(read_photo(rgba), photo)  # alpha dropped
    with pytest.raises(ImageError, match="H x W x 3"):
        read_photo(np.zeros((4, 5, 2), np.uint8))


def test_arrays_of_other_value_types_and_layouts(photo):
    """Floats in 0..1, 16-bit, bool and small integers are photos too; what
    cannot be one gets a sentence naming it, never a torch or numpy error."""
    assert np.array_equal(read_photo(photo / 255.0), photo)
    assert np.array_equal(read_photo(photo.astype(np.float32) / 255), photo)
    assert np.array_equal(read_photo(photo.astype(np.uint16) * 257), photo)
    assert np.array_equal(read_photo(photo.astype(np.int64)), photo)
    assert read_photo(photo[..., 0] > 100).max() == 255
    flipped = photo[:, ::-1]  # negative strides
    assert np.array_equal(read_photo(flipped), flipped) and all(s > 0 for s in read_photo(flipped).strides)
    for array, message in [
        (photo * 1.0, "front.png: a float64 photo array must hold values in 0..1"),
        (np.full(photo.shape, np.nan), "NaN"),
        (photo.astype(np.int16) - 5, "values in 0..255"),
        (photo.transpose(2, 0, 1), "channels-first: pass array.transpose"),
        (photo[None], "not a batch"),
    ]:
        with pytest.raises(ImageError, match=message):
            read_photo(array, name="front.png")
    for thing in (None, 5, [1, 2], io.BytesIO(b"x")):
        with pytest.raises(ImageError, match="photo: a .* is not a photo: give a path"):
            read_photo(thing)


def test_masks(tmp_path):
    mask = np.zeros((40, 50), np.uint8)
    mask[10:20, 5:30] = 1
    gif = tmp_path / "car_01_mask.gif"
    Image.fromarray(mask, mode="P").save(gif)
    assert np.array_equal(read_mask(gif), mask)
    png = tmp_path / "m.png"
    Image.fromarray(mask * 255).save(png)
    assert np.array_equal(read_mask(png), mask)
    with pytest.raises(ImageError, match="expected 60x40"):
        read_mask(gif, expected_size=(60, 40))
    grey = tmp_path / "grey.png"
    Image.fromarray((mask * 100 + 7).astype(np.uint8)).save(grey)
    with pytest.raises(ImageError, match="0/1"):
        read_mask(grey)

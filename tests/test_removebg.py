"""remove.bg's API on /v1.0/removebg: its fields, geometry, formats, conflicts and schema (TestClient, tiny model)."""

import base64
import io
import re
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")


SERVICE_DOC = Path(__file__).resolve().parents[1] / "docs" / "SERVICE.md"


# conftest's `client`: the service over the small photo-only U-Net


@pytest.fixture(scope="module")
def photo(synth_view) -> bytes:
    return synth_view[0].read_bytes()


@pytest.fixture(scope="module")
def big_photo(photo) -> bytes:
    """The photo at 960x640 (0.61 Mpx: over remove.bg's preview size)."""
    out = io.BytesIO()
    Image.open(io.BytesIO(photo)).resize((960, 640), Image.BICUBIC).save(out, "JPEG", quality=90)
    return out.getvalue()


def post(client, photo, **data):
    return client.post("/v1.0/removebg", files={"image_file": ("car.jpg", photo, "image/jpeg")}, data=data)


def image(response) -> Image.Image:
    assert response.status_code == 200, response.text
    result = Image.open(io.BytesIO(response.content))
    result.load()
    return result


def refused(response, *words, status=400, code="invalid_parameters") -> str:
    assert response.status_code == status, response.text
    [error] = response.json()["errors"]
    assert error["code"] == code and all(word in error["title"] for word in words), error
    return error["title"]


def box(response) -> dict[str, int]:
    return {k: int(response.headers[f"X-Foreground-{k.title()}"]) for k in ("top", "left", "width", "height")}


# -- row 3: base64 as large as a file -----------------------------------------------------------------


def test_a_base64_photo_may_be_as_large_as_a_file(client):
    """Over a megabyte of base64 (a 0.9 MB photo) is answered, as a form field or in JSON."""
    noisy = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (900, 1200, 3), dtype=np.uint8)).save(
        noisy, "JPEG", quality=90
    )
    b64 = base64.b64encode(noisy.getvalue()).decode()
    assert len(b64) > 1 << 20
    for answer in (
        client.post("/v1.0/removebg", data={"image_file_b64": b64, "size": "full"}),
        client.post("/v1.0/removebg", json={"image_file_b64": b64, "size": "full"}),
    ):
        assert image(answer).size == (1200, 900)


# -- row 4: colours with alpha ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "colour, rgba",
    [
        ("81d4fa77", (0x81, 0xD4, 0xFA, 0x77)),
        ("fff7", (255, 255, 255, 0x77)),
        ("81d4fa", (0x81, 0xD4, 0xFA, 255)),
        ("green", (0, 128, 0, 255)),
    ],
)
def test_bg_color_with_alpha(client, photo, colour, rgba):
    matte = np.asarray(image(post(client, photo, channels="alpha")))
    result = image(post(client, photo, bg_color=colour, format="png"))
    pixels = np.asarray(result.convert("RGBA"))
    assert result.mode == ("RGBA" if rgba[3] < 255 else "RGB")
    assert (pixels[matte == 0] == rgba).all()  # the studio: the colour itself, with its alpha
    assert (pixels[matte == 255][:, 3] == 255).all()  # the car: opaque


def test_bg_color_with_alpha_as_jpeg_and_auto(client, photo):
    assert post(client, photo, bg_color="81d4fa77").headers["content-type"] == "image/png"  # see-through: PNG
    assert post(client, photo, bg_color="81d4fa").headers["content-type"] == "image/jpeg"  # opaque: JPG
    assert image(post(client, photo, bg_color="81d4fa77", format="jpg")).mode == "RGB"


def test_a_bad_colour_is_named(client, photo):
    refused(post(client, photo, bg_color="81d4fa7"), "bg_color", "81d4fa7")
    refused(post(client, photo, bg_color="nocolour"), "bg_color")


# -- row 5: bg_image_url refused, never fetched -------------------------------------------------------


def test_urls_are_refused_and_never_fetched(client, photo):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/background.jpg"
        refused(post(client, photo, bg_image_url=url), "bg_image_url", "bg_image_file", code="url_not_supported")
        refused(client.post("/v1.0/removebg", data={"image_url": url}), "image_url", code="url_not_supported")
        refused(client.post("/v1.0/removebg", json={"image_url": url}), "image_url", code="url_not_supported")
        with pytest.raises(BlockingIOError):  # nobody connected
            listener.accept()


# -- row 6: conflicts ---------------------------------------------------------------------------------


def test_conflicting_fields_are_named(client, photo):
    b64 = base64.b64encode(photo).decode()
    refused(post(client, photo, image_file_b64=b64), "image_file and image_file_b64")
    back = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(back, "PNG")
    both = client.post(
        "/v1.0/removebg",
        data={"bg_color": "00b900"},
        files={"image_file": ("car.jpg", photo), "bg_image_file": ("b.png", back.getvalue())},
    )
    refused(both, "bg_color and bg_image_file")
    twice = client.post("/v1.0/removebg", files=[("image_file", ("a.jpg", photo)), ("image_file", ("b.jpg", photo))])
    refused(twice, "image_file was sent 2 times")
    refused(
        client.post(
            "/v1.0/removebg",
            content=b'{"size": "full", "size": "preview", "image_file_b64": "x"}',
            headers={"Content-Type": "application/json"},
        ),
        "size was sent 2 times",
    )
    refused(client.post("/v1.0/removebg", data={"image_file": "not a file"}), "image_file must be a file upload")


# -- row 7: channels=alpha in every format -------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, media, pil",
    [
        ("jpg", "image/jpeg", "JPEG"),
        ("png", "image/png", "PNG"),
        ("webp", "image/webp", "WEBP"),
        ("auto", "image/png", "PNG"),
    ],
)
def test_the_alpha_matte_comes_in_the_format_asked_for(client, photo, fmt, media, pil):
    answer = post(client, photo, channels="alpha", format=fmt)
    assert answer.headers["content-type"] == media
    matte = image(answer)
    assert matte.format == pil and matte.mode in ("L", "RGB")
    exact = np.asarray(image(post(client, photo, channels="alpha", format="png")), float)
    assert np.abs(np.asarray(matte.convert("L"), float) - exact).mean() < 8


# -- row 8: remove.bg's default size -------------------------------------------------------------------


def test_size_defaults_to_preview(client, big_photo):
    default = image(post(client, big_photo))
    assert default.width * default.height <= 250_000 and default.width / default.height == pytest.approx(1.5, 0.01)
    assert image(post(client, big_photo, size="full")).size == (960, 640)
    assert image(post(client, big_photo, size="medium")).size == (960, 640)  # never enlarged
    refused(post(client, big_photo, size="huge"), "size", "preview")


# -- row 9: geometry honoured, the rest checked -----------------------------------------------------------


def test_roi_limits_where_the_car_is_looked_for(client, photo):
    whole, left_half = post(client, photo, size="full"), post(client, photo, size="full", roi="0% 0% 50% 100%")
    alpha = np.asarray(image(left_half))[..., 3]
    assert not alpha[:, alpha.shape[1] // 2 :].any()
    assert box(whole)["width"] > box(left_half)["width"] > 0
    in_px = post(client, photo, size="full", roi=f"0px 0px {alpha.shape[1] // 2}px {alpha.shape[0]}px")
    assert in_px.content == left_half.content
    refused(post(client, photo, roi="0% 0% 50%"), "roi")
    refused(post(client, photo, roi="50% 0% 10% 100%"), "roi", "x1 < x2")


def test_crop_margin(client, photo):
    car = box(post(client, photo, size="full"))
    cropped = image(post(client, photo, size="full", crop="true", crop_margin="10px"))
    assert cropped.size == (car["width"] + 20, car["height"] + 20)
    mixed = image(post(client, photo, size="full", crop="true", crop_margin="4px 10%"))  # top/bottom, left/right
    assert mixed.size == (car["width"] + 2 * round(0.1 * car["width"]), car["height"] + 8)
    capped = image(post(client, photo, size="full", crop="true", crop_margin="400%"))  # at most half the car
    assert capped.size == (car["width"] + 2 * (car["width"] // 2), car["height"] + 2 * (car["height"] // 2))
    assert not np.asarray(cropped)[:10, :, 3].any()  # the margin is transparent
    refused(post(client, photo, crop="true", crop_margin="1px 2px 3px"), "crop_margin")


def test_scale_and_position(client, photo):
    scaled = post(client, photo, size="full", scale="50%")
    width, height = int(scaled.headers["X-Width"]), int(scaled.headers["X-Height"])
    car = box(scaled)
    assert max(car["width"] / width, car["height"] / height) == pytest.approx(0.5, abs=2 / min(width, height))
    assert abs(car["left"] - (width - car["width"]) / 2) <= 2 and abs(car["top"] - (height - car["height"]) / 2) <= 2
    corner = box(post(client, photo, size="full", position="0% 100%"))
    assert corner["left"] == 0 and corner["top"] + corner["height"] == height
    right = box(post(client, photo, size="full", scale="original", position="100%"))
    assert right["left"] + right["width"] == width and right["top"] + right["height"] == height
    refused(post(client, photo, scale="5%"), "scale")
    refused(post(client, photo, position="left"), "position")


def test_type_shadow_and_semitransparency_are_checked_then_ignored(client, photo):
    plain = post(client, photo)
    for field, value in (
        ("type", "person"),
        ("add_shadow", "true"),
        ("semitransparency", "false"),
        ("shadow_type", "drop"),
        ("shadow_opacity", "50"),
    ):
        assert post(client, photo, **{field: value}).content == plain.content, field
    assert plain.headers["X-Type"] == "car" and "X-Type" not in post(client, photo, type_level="none").headers
    refused(post(client, photo, type="boat"), "type", "boat")
    refused(post(client, photo, add_shadow="maybe"), "add_shadow")


def test_the_service_doc_says_what_becomes_of_every_field():
    from carmask.serve import removebg

    table = SERVICE_DOC.read_text(encoding="utf-8").split("\n## remove.bg compatibility\n", 1)[1]
    named = set(re.findall(r"^\| `([a-z_0-9]+)`", table, re.M))
    assert set(removebg.FIELDS) <= named, set(removebg.FIELDS) - named
    for header in ("X-Width", "X-Height", "X-Type", "X-Credits-Charged", "X-Foreground-Top", "X-RateLimit-Limit"):
        assert f"`{header}`" in table, header


# -- row 11: the schema tells the truth ------------------------------------------------------------------


def test_the_schema_documents_what_the_endpoint_answers(client):
    operation = client.get("/openapi.json").json()["paths"]["/v1.0/removebg"]["post"]
    assert "422" not in operation["responses"]
    assert "errors" in operation["responses"]["400"]["content"]["application/json"]["schema"]["properties"]
    content = operation["requestBody"]["content"]
    assert {"multipart/form-data", "application/x-www-form-urlencoded", "application/json"} <= set(content)
    form, body = content["multipart/form-data"]["schema"]["properties"], content["application/json"]["schema"]
    assert form["image_file"]["format"] == "binary" and "image_file" not in body["properties"]
    assert "bg_image_url" in form and "Refused" in form["image_url"]["description"]
    assert form["size"]["default"] == "preview" and "webp" in form["format"]["enum"]
    assert "X-Foreground-Top" in operation["responses"]["200"]["headers"]


# -- the geometry alone ---------------------------------------------------------------------------------


def test_geometry_on_arrays():
    from carmask.serve import removebg

    rgba = np.zeros((100, 200, 4), np.uint8)
    rgba[40:60, 50:90] = 255  # a 40 x 20 car
    options = removebg.parse({"crop": "true", "crop_margin": "1000px"}, {"image_file"})
    assert removebg.shape(rgba, options).shape == (40, 80, 4)  # capped at half the car a side
    placed = removebg.shape(rgba, removebg.parse({"scale": "100%", "size": "full"}, {"image_file"}))
    assert removebg.foreground_box(placed[..., 3]) == {"top": 0, "left": 0, "width": 200, "height": 100}
    with pytest.raises(removebg.RemoveBgError, match="no car"):
        removebg.shape(np.zeros_like(rgba), options)

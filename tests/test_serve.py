"""The HTTP service: endpoints, limits, bad input and concurrency (TestClient, tiny models)."""

import base64
import io
import json
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient  # noqa: E402
from helpers import run_cli  # noqa: E402

from carmask import __version__  # noqa: E402
from carmask.cutout import parse_background  # noqa: E402
from carmask.serve import create_app  # noqa: E402
from carmask.serve.server import page_url  # noqa: E402
from carmask.serve.uploads import safe_label  # noqa: E402

# -- fixtures -----------------------------------------------------------------------------------

# conftest's: `rgb_predictor`, `client` (single photos: the small photo-only U-Net)


@pytest.fixture(scope="module")
def set_client(seed_model):
    """Sets of views: the seed CNN (needs >= 3 views of a car)."""
    with TestClient(create_app(model=str(seed_model), device="cpu")) as c:
        yield c


@pytest.fixture(scope="module")
def photo(synth_view):
    """A training view with its exact mask: (jpeg bytes, mask HxW 0/1)."""
    path, mask = synth_view
    return path.read_bytes(), mask


@pytest.fixture(scope="module")
def views(synth_data):
    """The 16 views of the test car: [(name, bytes)]."""
    paths = sorted((synth_data / "test").glob("*.jpg"))
    assert len(paths) == 16
    return [(p.name, p.read_bytes()) for p in paths]


def _png(response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def _post(client, data, name="car_05.jpg", kind="image/jpeg", **form):
    return client.post("/api/cutout", files={"file": (name, data, kind)}, data=form)


# -- meta ---------------------------------------------------------------------------------------


def test_health_version_openapi(client, rgb_model):
    assert client.get("/health").json() == {"status": "ok"}
    version = client.get("/version").json()
    assert version["version"] == __version__
    assert version["models"] == [Path(rgb_model).stem]
    schema = client.get("/openapi.json").json()
    assert {"/health", "/version", "/api/cutout", "/api/cutout-set"} <= set(schema["paths"])
    assert "image/png" in schema["paths"]["/api/cutout"]["post"]["responses"]["200"]["content"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_pages_are_served_from_here(client, page):
    """/docs and /redoc with their scripts, styles and icon from this server (the
    fastapi-offline wheel's files), never a CDN; the browser test renders them offline."""
    html = client.get(page)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*["']([^"']+)""", html.text)
    assert urls and not [url for url in urls if re.match(r"(https?:)?//", url)], urls
    assert "fonts.googleapis" not in html.text
    for url in urls:
        assert client.get(url).status_code == 200, url


def test_the_api_pages_run_only_their_own_inline_blocks(client):
    """/docs and /redoc are FastAPI's pages, with an inline script: the CSP admits
    exactly those blocks by hash; ReDoc writes its styles as it renders, so only
    its styles may be inline. Every other answer gets the strict policy."""
    policies = {
        page: dict(
            part.strip().split(" ", 1) for part in client.get(page).headers["content-security-policy"].split(";")
        )
        for page in ("/docs", "/redoc", "/health")
    }
    assert re.fullmatch(r"'self' 'sha256-[A-Za-z0-9+/=]+'", policies["/docs"]["script-src"])
    assert policies["/docs"]["style-src"] == "'self'"
    assert policies["/redoc"]["script-src"] == "'self'" and policies["/redoc"]["style-src"] == "'self' 'unsafe-inline'"
    assert policies["/health"]["script-src"] == policies["/health"]["style-src"] == "'self'"


def test_page_is_self_contained(client):
    """The page, its script and its styles come from this server, and nothing they name
    is fetched from elsewhere; the CSP lets nothing inline run."""
    response = client.get("/")
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    html = response.text
    assert "carmask" in html and "<script>" not in html and "<style>" not in html and "style=" not in html
    files = {url: client.get(url) for url in re.findall(r"""(?:src|href)\s*=\s*["'](/static/[^"']+)""", html)}
    assert sorted(files) == ["/static/page.css", "/static/page.js"]
    assert all(answer.status_code == 200 for answer in files.values())
    assert "/api/cutout" in files["/static/page.js"].text
    for text in [html, *(answer.text for answer in files.values())]:
        # No CDN or other external fetches: every src/href is local, data: or blob:.
        for url in re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", text):
            assert not re.match(r"(https?:)?//", url), url
        assert "@import" not in text
    policy = response.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "style-src 'self';" in policy and "unsafe" not in policy


# -- one photo ----------------------------------------------------------------------------------


def test_transparent_cutout(client, photo):
    data, mask = photo
    image = _png(_post(client, data))
    assert image.mode == "RGBA" and image.size == (mask.shape[1], mask.shape[0])
    alpha = np.asarray(image)[..., 3].astype(float)
    assert alpha[mask].mean() > 0.8 * 255
    assert alpha[~mask].mean() < 0.2 * 255
    assert client.post("/api/cutout", files={"file": ("car_05.jpg", data, "image/jpeg")}).status_code == 200


@pytest.mark.parametrize("bg", ["mask", "transparent"])
def test_the_cli_and_the_service_cut_a_photo_out_alike(client, photo, rgb_model, tmp_path, bg):
    """`carmask cutout` and POST /api/cutout of one photo, same model: the same pixels."""
    source = tmp_path / "car_05.jpg"
    source.write_bytes(photo[0])
    assert (
        run_cli("cutout", source, "-o", tmp_path / "out", "--bg", bg, "--model", rgb_model, "--device", "cpu").exit_code
        == 0
    )
    [written] = (tmp_path / "out").glob("*.png")
    over_http = np.asarray(_png(_post(client, photo[0], bg=bg)))
    assert np.array_equal(np.asarray(Image.open(written)), over_http)


def test_mask_and_colour_backgrounds(client, photo):
    data, mask = photo
    image = _png(_post(client, data, bg="mask"))
    assert image.mode == "L" and image.size == (mask.shape[1], mask.shape[0])
    assert set(np.unique(np.asarray(image))) <= {0, 255}
    assert ((np.asarray(image) > 0) == mask).mean() > 0.9
    for bg in ("green", "#00b900", "0,185,0", " 0, 185, 0 "):
        rgb = np.asarray(_png(_post(client, data, bg=bg)))
        assert rgb.ndim == 3 and rgb.shape[2] == 3
        corner = rgb[:5, :5].reshape(-1, 3).mean(0)  # background: the colour itself
        assert corner[1] > 100 and corner[0] < 40 and corner[2] < 40, (bg, corner)


def test_background_image_upload(client, photo):
    data, mask = photo
    back = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 20, 20)).save(back, "PNG")
    response = client.post(
        "/api/cutout",
        files={"file": ("car.jpg", data, "image/jpeg"), "background": ("back.png", back.getvalue(), "image/png")},
    )
    rgb = np.asarray(_png(response))
    assert rgb.shape == (*mask.shape, 3)
    assert np.abs(rgb[:5, :5].reshape(-1, 3).mean(0) - (200, 20, 20)).max() < 25


@pytest.mark.parametrize(
    "bg", ["/etc/passwd", "../x.png", "x.png", "C:\\x.png", "nocolour", "1,2,300", "#12345g", "rgb(1,2,3)"]
)
def test_bg_is_never_a_path(client, photo, bg, monkeypatch):
    import carmask.cutout

    monkeypatch.setattr(carmask.cutout, "read_photo", lambda *a, **k: pytest.fail("read a file"))
    response = _post(client, photo[0], bg=bg)
    assert response.status_code == 422, response.text
    assert "bg" in response.json()["detail"]


def test_parse_client_background(tmp_path):
    assert parse_background("Transparent", files=False) == "transparent"
    assert parse_background("mask", files=False) == "mask"
    assert parse_background("#00b900", files=False) == (0, 185, 0)
    assert parse_background("0,185,0", files=False) == (0, 185, 0)
    assert parse_background("white", files=False) == (255, 255, 255)
    image = tmp_path / "back.png"
    Image.new("RGB", (4, 3)).save(image)
    with pytest.raises(ValueError, match="not transparent, mask, a colour"):
        parse_background(str(image), files=False)
    assert parse_background(str(image)).shape == (3, 4, 3)
    assert safe_label("../../etc/passwd") == "passwd"
    assert safe_label("..\\a b.jpg") == "a_b.jpg"
    assert safe_label("...") == "upload"
    assert safe_label("Kühler Grill/Æbleø_01.jpg") == "Æbleø_01.jpg"
    assert safe_label("a\x00b\u202e.jpg") == "a_b_.jpg"  # controls and bidi marks are not kept


def test_names_in_other_scripts_are_kept(client, photo):
    answer = client.post("/api/cutout", files={"file": ("Kühler.jpg", photo[0], "image/jpeg")})
    assert answer.status_code == 200
    assert (
        answer.headers["content-disposition"] == "inline; filename=\"K_hler.png\"; filename*=UTF-8''K%C3%BChler.png"
    )  # was K_hler.png alone


def test_a_set_in_another_script_keeps_its_names(set_client, views):
    files = [("files", (f"Škoda_{i:02d}.jpg", data, "image/jpeg")) for i, (_, data) in enumerate(views[:3], 1)]
    assert sorted(_zip_names(set_client.post("/api/cutout-set", files=files))) == [
        "Škoda_01.png",
        "Škoda_02.png",
        "Škoda_03.png",
    ]


# -- bad input ----------------------------------------------------------------------------------


def test_upload_too_large(rgb_predictor, photo):
    with TestClient(create_app(rgb_predictor, max_upload_bytes=4000)) as small:
        response = _post(small, photo[0] + b"\0" * 70_000)  # over the limit plus multipart slack
        assert response.status_code == 413
        assert "limit" in response.json()["detail"]
        response = _post(small, photo[0])  # a few KB: over 4000 bytes, within the body slack
        assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_upload_too_large_without_content_length(rgb_predictor, photo):
    """Chunked upload (no Content-Length): the bytes are counted as they arrive."""
    boundary = "carmaskboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + photo[0]
        + b"\0" * 200_000
        + f"\r\n--{boundary}--\r\n".encode()
    )
    chunks = (body[i : i + 16384] for i in range(0, len(body), 16384))
    with TestClient(create_app(rgb_predictor, max_upload_bytes=4000)) as small:
        response = small.post(
            "/api/cutout", content=chunks, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        assert response.status_code == 413, response.text


def test_too_many_pixels(rgb_predictor, photo):
    with TestClient(create_app(rgb_predictor, max_pixels=10_000)) as small:
        response = _post(small, photo[0])
        assert response.status_code == 413
        assert "pixels" in response.json()["detail"]


def test_not_an_image_type(client):
    response = _post(client, b"hello", name="notes.txt", kind="text/plain")
    assert response.status_code == 415
    assert "notes.txt" in response.json()["detail"]


@pytest.mark.parametrize("case", ["truncated", "empty", "text"])
def test_unreadable_image(client, photo, case):
    data = {"truncated": photo[0][: len(photo[0]) // 2], "empty": b"", "text": b"not a jpeg at all"}[case]
    response = _post(client, data, name=f"broken_{case}.jpg")
    assert response.status_code == 422, response.text
    assert f"broken_{case}.jpg" in response.json()["detail"]


def test_a_repeated_field_is_refused(client, photo):
    """Two photos to /api/cutout (or two bg): a 400 naming the field, not one of them used silently."""
    twice = client.post(
        "/api/cutout", files=[("file", ("a.jpg", photo[0], "image/jpeg")), ("file", ("b.jpg", photo[0], "image/jpeg"))]
    )
    assert (
        twice.status_code == 400
        and twice.json()["detail"]
        == "field 'file' was sent 2 times: send it once (several photos go to /api/cutout-set)"
    )
    two_bg = client.post(
        "/api/cutout", files={"file": ("a.jpg", photo[0], "image/jpeg")}, data={"bg": ["mask", "green"]}
    )
    assert two_bg.status_code == 400 and "'bg' was sent 2 times" in two_bg.json()["detail"]


@pytest.mark.parametrize("kind", ["eps", "gif"])
def test_only_photo_formats_are_decoded(client, set_client, views, kind, monkeypatch):
    """An EPS file (Pillow would run Ghostscript on it) or a GIF, sent as a JPEG:
    refused by name on every endpoint, no other decoder ever reached."""
    from PIL import EpsImagePlugin

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: pytest.fail("Ghostscript was run"))
    data = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 10)).save(data, kind.upper())
    sent = ("car_01.jpg", data.getvalue(), "image/jpeg")
    answer = client.post("/api/cutout", files={"file": sent})
    assert answer.status_code == 422
    assert answer.json()["detail"] == "car_01.jpg: not a readable JPEG, PNG, WebP, TIFF or BMP image"
    removebg = client.post("/v1.0/removebg", files={"image_file": sent})
    assert removebg.status_code == 400 and removebg.json()["errors"][0]["code"] == "invalid_image"
    background = client.post("/api/cutout", files={"file": ("car.jpg", views[0][1], "image/jpeg"), "background": sent})
    assert background.status_code == 422 and background.json()["detail"].startswith("car_01.jpg: not a readable")
    members = _zip_names(
        set_client.post(
            "/api/cutout-set",
            files=[("files", sent)] + [("files", (name, data, "image/jpeg")) for name, data in views[1:4]],
        )
    )
    assert "car_01.jpg: not a readable JPEG" in members["errors.txt"].decode()


def test_the_host_check_stays_on_for_every_interface(rgb_predictor):
    """Bound to 0.0.0.0: IP addresses and localhost are served, a rebound name
    is not (even with a matching Origin), a name given with --allow-host is."""
    from carmask.serve.guard import local_hosts

    hosts = local_hosts("0.0.0.0", ["Studio.Example"])
    with TestClient(create_app(rgb_predictor, hosts=hosts)) as c:
        rebound = c.post(
            "/api/cutout", headers={"Host": "attacker.example:8000", "Origin": "http://attacker.example:8000"}
        )
        assert rebound.status_code == 403 and "--allow-host" in rebound.json()["detail"]
        for host in ("192.168.1.20:8000", "[fe80::1]:8000", "127.0.0.1", "localhost:8000", "studio.example"):
            assert c.get("/health", headers={"Host": host}).status_code == 200, host


def test_serve_takes_allow_host_and_says_how(monkeypatch):
    import carmask.serve
    from carmask.serve.server import startup_lines

    seen = {}
    monkeypatch.setattr(carmask.serve, "run", lambda **kwargs: seen.update(kwargs))
    result = run_cli("serve", "--host", "0.0.0.0", "--allow-host", "studio.example", "--allow-host", "cars.example")
    assert result.exit_code == 0 and seen["allow_hosts"] == ("studio.example", "cars.example")
    refused = run_cli("serve", "--allow-host", "http://studio.example:80")
    assert refused.exit_code == 2 and "is not a host name" in refused.output
    from carmask.serve.guard import local_hosts

    lines = startup_lines("0.0.0.0", 8000, local_hosts("0.0.0.0", ["studio.example"]), 30)
    assert "localhost, studio.example or to an IP address" in lines[1] and "--allow-host NAME" in lines[1]
    assert "up to 30 s" in lines[2] and "a second signal quits at once" in lines[2]


def test_missing_file_field(client):
    assert client.post("/api/cutout", data={"bg": "mask"}).status_code == 422
    as_text = client.post("/api/cutout", data={"file": "not a file"})
    assert as_text.status_code == 422 and as_text.json()["detail"] == "field 'file' must be a file upload"


def test_the_openapi_schema_has_no_duplicate_operations(client, recwarn):
    schema = client.get("/openapi.json").json()
    ids = [op["operationId"] for path in schema["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids)) and client.head("/health").status_code == 200
    assert not [w for w in recwarn if "Duplicate Operation ID" in str(w.message)]


def test_head_and_the_frameworks_own_errors(client):
    """HEAD answers like GET (monitors use it); 404, 405 and the form parser's
    400s come in the endpoint's error shape, naming what to do."""
    assert client.head("/health").status_code == client.head("/").status_code == 200
    wrong_method = client.get("/v1.0/removebg")
    assert wrong_method.status_code == 405 and wrong_method.json()["errors"][0]["title"] == "Method Not Allowed"
    assert client.get("/v1.0/account").json()["errors"][0]["title"] == "Not Found"
    assert client.get("/api/cutout").json() == {"detail": "Method Not Allowed"}
    not_a_photo = client.post("/v1.0/removebg", data={"image_file_b64": "A" * (2 << 20)})  # 1.5 MB of zeros
    assert not_a_photo.status_code == 400
    assert not_a_photo.json()["errors"][0] == {
        "title": "image_file_b64: not a readable JPEG, PNG, WebP, TIFF or BMP image",
        "code": "invalid_image",
    }


def test_model_that_cannot_handle_a_single_photo(set_client, photo):
    response = _post(set_client, photo[0])
    assert response.status_code == 422
    assert "views" in response.json()["detail"]


def test_not_enough_views_is_told_by_its_type(client, photo, monkeypatch):
    """A cut-out refused for want of views (`NotEnoughViews`, whatever its words):
    422 on /api/cutout, remove.bg's 400 unknown_foreground on its endpoint."""
    from carmask.inputs.spec import NotEnoughViews

    def refuse(*args, **kwargs):
        raise NotEnoughViews("reworded at will")

    monkeypatch.setattr(client.app.state.service.predictor, "predict_views", refuse)
    answer = _post(client, photo[0])
    assert answer.status_code == 422 and answer.json() == {"detail": "car_05.jpg: reworded at will"}
    removebg = client.post("/v1.0/removebg", files={"image_file": ("car_05.jpg", photo[0], "image/jpeg")})
    assert removebg.status_code == 400 and removebg.json()["errors"][0]["code"] == "unknown_foreground"


def test_concurrent_requests(client, photo):
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: _post(client, photo[0], bg=("transparent", "mask")[i % 2]), range(16)))
    assert [r.status_code for r in responses] == [200] * 16


# -- sets ---------------------------------------------------------------------------------------


def _zip_names(response) -> dict[str, bytes]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_set_of_views(set_client, views):
    response = set_client.post("/api/cutout-set", files=[("files", (name, data, "image/jpeg")) for name, data in views])
    members = _zip_names(response)
    assert sorted(members) == sorted(name.replace(".jpg", ".png") for name, _ in views)
    for data in members.values():
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG" and image.mode == "RGBA" and image.size == (192, 128)


def test_set_as_zip_with_bad_members(set_client, views):
    upload = io.BytesIO()
    with zipfile.ZipFile(upload, "w") as archive:
        for name, data in views[:5]:
            archive.writestr(f"../../somewhere/{name}", data)  # a path: used as a label only
        archive.writestr("cars/readme.txt", "hello")
        archive.writestr("broken_01.jpg", b"not a photo")
        archive.writestr("__MACOSX/._x_01.jpg", b"junk")
    response = set_client.post(
        "/api/cutout-set", data={"bg": "mask"}, files={"files": ("views.zip", upload.getvalue(), "application/zip")}
    )
    members = _zip_names(response)
    assert sorted(m for m in members if m.endswith(".png")) == sorted(
        n.replace(".jpg", "_mask.png") for n, _ in views[:5]
    )
    assert Image.open(io.BytesIO(members[views[0][0].replace(".jpg", "_mask.png")])).mode == "L"
    errors = members["errors.txt"].decode()
    assert "readme.txt" in errors and "broken_01.jpg" in errors  # a lone photo: not enough views


def test_set_bad_input(set_client, views):
    assert set_client.post("/api/cutout-set", files={"files": ("a.txt", b"x", "text/plain")}).status_code == 415
    response = set_client.post("/api/cutout-set", files={"files": ("v.zip", b"PK\x03\x04broken", "application/zip")})
    assert response.status_code == 422
    # Two views are not a set: the seed model cannot cut out either of them.
    response = set_client.post("/api/cutout-set", files=[("files", (n, d, "image/jpeg")) for n, d in views[:2]])
    assert response.status_code == 422 and "views" in response.json()["detail"]


def test_warnings_reach_the_client(set_client, client, views, photo, monkeypatch):
    """How a photo was cut out (here: a view of another size, taken out of its
    set) comes back in warnings.txt for sets, in X-Carmask-Warning for one photo."""
    odd = io.BytesIO()
    Image.open(io.BytesIO(views[2][1])).resize((384, 256)).save(odd, format="JPEG")
    files = [
        ("files", (name, odd.getvalue() if i == 2 else data, "image/jpeg")) for i, (name, data) in enumerate(views[:6])
    ]
    members = _zip_names(set_client.post("/api/cutout-set", files=files))
    assert "not the size of the other views" in members["warnings.txt"].decode()
    assert views[2][0] in members["warnings.txt"].decode() and views[2][0] in members["errors.txt"].decode()
    manifest = json.loads(members["manifest.json"])  # the same as values, for the page
    assert [(n["kind"], n["photos"], n["treatment"]) for n in manifest["notes"]] == [
        ("OTHER_SIZE", [views[2][0]], "ALONE")
    ] and manifest["notes"][0]["text"] in members["warnings.txt"].decode()
    assert views[2][0] in {error["photo"] for error in manifest["skipped"]}
    import carmask.serve.service

    real = carmask.serve.service.remove_set

    from carmask.outcomes import Note, NoteKind, Treatment

    def warned(*args, **kwargs):
        results = real(*args, **kwargs)
        results[0].note = Note(NoteKind.OTHER_SIZE, ("photo\n.jpg",), Treatment.ALONE, size=(192, 128))
        return results

    monkeypatch.setattr(carmask.serve.service, "remove_set", warned)
    response = _post(client, photo[0])
    assert response.status_code == 200 and response.headers["x-carmask-note"] == "OTHER_SIZE"
    assert response.headers["x-carmask-warning"] == (
        "photo?.jpg: not the size of the other views (192x128): predicted alone"
    )


def test_memory_is_given_back_once_the_server_is_idle():
    """The idle hook runs once the idle wait is over and no job is at work, never
    while one is (the wait is the test's own: nothing sleeps)."""
    import threading

    from carmask.serve.limits import Admission

    trimmed, waiting, waited = threading.Event(), threading.Semaphore(0), threading.Semaphore(0)

    def pause(seconds):  # the idle wait: until the test lets it end
        waiting.release()
        waited.acquire()

    admission = Admission(2, 100, on_idle=trimmed.set, pause=pause)
    with admission.job(), admission.pixels(10):
        with admission.job():
            pass  # one job ends while another is at work
        assert waiting.acquire(timeout=30)  # the idle wait begins
        waited.release()
        assert waiting.acquire(timeout=30)  # over, but a job is at work: waits again, nothing trimmed
        assert not trimmed.is_set()
    waited.release()  # the last job has ended: this wait is the last
    assert trimmed.wait(30)


def test_removebg_json_answer_and_foreground_box(client, photo):
    """remove.bg's clients send `Accept: application/json` and read data.result_b64;
    X-Foreground-* and foreground_* give the car's box, not the frame."""
    post = lambda **headers: client.post(
        "/v1.0/removebg",
        headers=headers,  # noqa: E731
        files={"image_file": ("car.jpg", photo[0], "image/jpeg")},
    )
    image, answer = post(), post(Accept="application/json")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    data = answer.json()["data"]
    assert base64.b64decode(data["result_b64"]) == image.content
    alpha = np.asarray(Image.open(io.BytesIO(image.content)))[..., 3] >= 32
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    box = {"top": rows[0], "left": cols[0], "width": cols[-1] - cols[0] + 1, "height": rows[-1] - rows[0] + 1}
    assert box["width"] < alpha.shape[1]  # a car, not the frame
    for key, value in box.items():
        assert data[f"foreground_{key}"] == value == int(image.headers[f"X-Foreground-{key.title()}"])


def test_allowed_origins_can_read_the_answers(rgb_predictor, photo):
    """--allow-origin: the browser's preflight (X-Api-Key is not a simple header)
    is answered, and the answers (errors too) carry the CORS headers that let
    that page read them; other origins get none."""
    studio = "http://studio.example:8080"
    with TestClient(create_app(rgb_predictor, api_key="k", allow_origins=[studio])) as c:
        preflight = c.options(
            "/v1.0/removebg",
            headers={
                "Origin": studio,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-api-key",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == studio
        assert "x-api-key" in preflight.headers["access-control-allow-headers"].lower()
        answer = c.post(
            "/v1.0/removebg",
            headers={"Origin": studio, "X-Api-Key": "k"},
            files={"image_file": ("car.jpg", photo[0], "image/jpeg")},
        )
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == studio
        assert "x-width" in answer.headers["access-control-expose-headers"].lower()
        refused = c.post("/v1.0/removebg", headers={"Origin": studio})
        assert refused.status_code == 403 and refused.headers["access-control-allow-origin"] == studio
        evil = c.options(
            "/v1.0/removebg", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in evil.headers


def test_allowed_origins_are_written_as_browsers_send_them(rgb_predictor, photo):
    """An origin given with a default port, capitals or a slash still matches
    the browser's Origin header; '*' and what is no origin are refused."""
    with TestClient(create_app(rgb_predictor, allow_origins=["HTTPS://Studio.Example:443/"])) as c:
        answer = c.post(
            "/api/cutout",
            headers={"Origin": "https://studio.example"},
            files={"file": ("car.jpg", photo[0], "image/jpeg")},
        )
        assert answer.status_code == 200, answer.text
    for bad in ("*", "studio.example", "https://studio.example/page", "ftp://studio.example"):
        with pytest.raises(ValueError, match="is not an origin"):
            create_app(rgb_predictor, allow_origins=[bad])
    result = run_cli("serve", "--allow-origin", "*")
    assert result.exit_code == 2 and "'*' is not allowed" in result.output


def test_the_api_key_guards_every_post(rgb_predictor, photo):
    """With an API key, the page's routes need it too (else it protects nothing)."""
    files = {"file": ("car.jpg", photo[0], "image/jpeg")}
    with TestClient(create_app(rgb_predictor, api_key="k")) as c:
        assert c.get("/version").json()["api_key"] is True  # the page asks for the key
        for path, form in (("/api/cutout", files), ("/api/cutout-set", {"files": files["file"]})):
            refused = c.post(path, files=form, headers={"X-Api-Key": "wrong"})
            assert refused.status_code == 403 and "X-Api-Key" in refused.json()["detail"]
        assert c.post("/v1.0/removebg").json()["errors"][0]["code"] == "auth_failed"
        assert c.post("/api/cutout", files=files, headers={"X-Api-Key": "k"}).status_code == 200


def test_two_cars_in_zip_folders_with_the_same_names_stay_two_sets(set_client, views):
    """a/car_01..03 and b/car_01..03: two sets (the seed model cuts out sets only),
    b's outputs named car_0N-2.png and made from b's photos."""
    names = [name for name, _ in views[:3]]
    upload = io.BytesIO()
    with zipfile.ZipFile(upload, "w") as archive:
        for folder, chosen in (("a", views[:3]), ("b", views[3:6])):
            for name, (_, data) in zip(names, chosen):
                archive.writestr(f"{folder}/{name}", data)
    members = _zip_names(set_client.post("/api/cutout-set", files={"files": ("cars.zip", upload.getvalue())}))
    stems = [name.removesuffix(".jpg") for name in names]
    assert sorted(members) == sorted([f"{s}.png" for s in stems] + [f"{s}-2.png" for s in stems])
    alone = _zip_names(
        set_client.post(
            "/api/cutout-set",
            files=[("files", (name, data, "image/jpeg")) for name, (_, data) in zip(names, views[3:6])],
        )
    )
    assert all(members[f"{s}-2.png"] == alone[f"{s}.png"] for s in stems)


def test_removebg_json_request(client, photo):
    """remove.bg also takes its fields as a JSON body (image_file_b64, size, format, ...)."""
    b64 = base64.b64encode(photo[0]).decode()
    answer = client.post("/v1.0/removebg", json={"image_file_b64": b64, "format": "jpg", "bg_color": "00b900"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    for body, field in (
        ({"image_file_b64": [7]}, "image_file_b64 must be a string"),
        ([b64], "object"),
        ({"image_url": "http://169.254.169.254/"}, "fetches nothing"),
        ({}, "No image given"),
    ):
        refused = client.post("/v1.0/removebg", json=body)
        assert refused.status_code == 400 and field in refused.json()["errors"][0]["title"]
    broken = client.post("/v1.0/removebg", content=b"{not json", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and "JSON" in broken.json()["errors"][0]["title"]


def test_a_bug_is_a_json_500_without_internals(rgb_predictor, photo, monkeypatch):
    from carmask.serve.service import Service

    monkeypatch.setattr(Service, "cut", lambda *a: 1 / 0)
    with TestClient(create_app(rgb_predictor), raise_server_exceptions=False) as c:
        for path, field, shape in (("/api/cutout", "file", "detail"), ("/v1.0/removebg", "image_file", "errors")):
            answer = c.post(path, files={field: ("car.jpg", photo[0], "image/jpeg")})
            assert answer.status_code == 500 and shape in answer.json()
            assert "internal error" in answer.text and "ZeroDivision" not in answer.text


def test_the_printed_page_address_opens():
    assert page_url("::1", 8000) == "http://[::1]:8000/"
    assert page_url("0.0.0.0", 8000) == page_url("::", 8000) == "http://127.0.0.1:8000/"
    assert page_url("localhost", 80) == "http://localhost:80/"


def test_removebg_crop(client, photo):
    """crop=true trims the cut-out to the car's box (form or JSON); a bad value is named."""
    files = {"image_file": ("car.jpg", photo[0], "image/jpeg")}
    whole = client.post("/v1.0/removebg", files=files)
    top, left, width, height = (int(whole.headers[f"X-Foreground-{k}"]) for k in ("Top", "Left", "Width", "Height"))
    cropped = client.post("/v1.0/removebg", files=files, data={"crop": "true"})
    image = np.asarray(Image.open(io.BytesIO(cropped.content)))
    assert image.shape[:2] == (height, width) and cropped.headers["X-Width"] == str(width)
    assert np.array_equal(
        image, np.asarray(Image.open(io.BytesIO(whole.content)))[top : top + height, left : left + width]
    )
    as_json = client.post("/v1.0/removebg", json={"image_file_b64": base64.b64encode(photo[0]).decode(), "crop": True})
    assert as_json.content == cropped.content
    refused = client.post("/v1.0/removebg", files=files, data={"crop": "maybe"})
    assert refused.status_code == 400 and "crop" in refused.json()["errors"][0]["title"]


def test_uploads_are_read_into_memory_only_inside_a_job(rgb_predictor, photo, monkeypatch):
    """Requests beyond the jobs wait with their uploads spooled, not in memory
    (30 tiny zips unpacking 100 MiB each took a server to 3.2 GiB). The first
    read holds on until all four requests are at the admission: any other let
    in would read beside it."""
    import threading

    from carmask.serve.uploads import Budget

    app = create_app(rgb_predictor, max_concurrency=1)
    admission, requests = app.state.service.admission, 4
    active, most, arrived, lock, everyone_in = [0], [0], [0], threading.Lock(), threading.Event()
    read, job = Budget.read, admission.job

    def arriving():
        with lock:
            arrived[0] += 1
            if arrived[0] == requests:
                everyone_in.set()
        return job()

    def counting(budget, upload):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        assert everyone_in.wait(60)
        try:
            return read(budget, upload)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(Budget, "read", counting)
    monkeypatch.setattr(admission, "job", arriving)
    with TestClient(app) as c, ThreadPoolExecutor(requests) as pool:
        answers = list(pool.map(lambda _: _post(c, photo[0]).status_code, range(requests)))
    assert answers == [200] * requests and most[0] == 1


def test_a_body_too_large_to_drain_is_answered_at_once():
    """A Content-Length past what the guard would ever drain is answered 413
    at once, not after the body timeout (the client never sends it)."""
    import asyncio

    from carmask.serve.guard import DRAIN_BYTES, Guard

    async def app(scope, receive, send):
        raise AssertionError("the route must not run")

    async def receive():
        await asyncio.Event().wait()  # the body never comes

    sent = []

    async def send(message):
        sent.append(message)

    guard = Guard(app, max_body=1000, hosts=None, origins=set(), body_timeout=600)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/cutout",
        "scheme": "http",
        "headers": [(b"content-length", str(DRAIN_BYTES * 10**9).encode())],
    }
    asyncio.run(asyncio.wait_for(guard(scope, receive, send), 30))
    assert sent[0]["status"] == 413

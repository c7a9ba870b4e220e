"""The service on a real socket: a remove.bg client, and the bounds a hostile client meets."""
import io
import socket
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
requests = pytest.importorskip("requests")

from carmask.predict import Predictor  # noqa: E402
from live_server import live_server  # noqa: E402
from carmask.serve import create_app, timed_protocol  # noqa: E402

KEY = "test-key"
AUTH = {"X-Api-Key": KEY}


@pytest.fixture(scope="module")
def server(rgb_model):
    """The app under uvicorn (the serve verb's protocol, short timeouts) on a free loopback port."""
    app = create_app(Predictor(model=rgb_model, device="cpu"), max_upload_bytes=1 << 20, api_key=KEY,
                     hosts={"127.0.0.1", "localhost"}, allow_origins=["http://allowed.example:8080"],
                     body_timeout=2.0)
    with live_server(app, http=timed_protocol(header_timeout=1.0)) as url:
        yield url


@pytest.fixture(scope="module")
def photo(synth_data):
    path = sorted((synth_data / "train").glob("*_05.jpg"))[0]
    mask = np.asarray(Image.open(synth_data / "train_masks" / f"{path.stem}_mask.gif")) > 0
    return path, mask


def test_unmodified_removebg_client_gets_a_cutout(server, photo, tmp_path, monkeypatch):
    """The `removebg` package from PyPI, as published: only its endpoint is pointed here."""
    removebg = pytest.importorskip("removebg")
    import removebg.removebg as client_module
    monkeypatch.setattr(client_module, "API_ENDPOINT", server + "/v1.0/removebg")
    path, mask = photo
    local = tmp_path / path.name
    local.write_bytes(path.read_bytes())
    removebg.RemoveBg(KEY, str(tmp_path / "errors.log")).remove_background_from_img_file(str(local))
    image = Image.open(str(local) + "_no_bg.png")
    assert image.format == "PNG" and image.mode == "RGBA" and image.size == (mask.shape[1], mask.shape[0])
    alpha = np.asarray(image)[..., 3].astype(float)
    assert alpha[mask].mean() > 0.8 * 255 and alpha[~mask].mean() < 0.2 * 255
    with pytest.raises(requests.HTTPError):  # a wrong key is refused
        removebg.RemoveBg("wrong", str(tmp_path / "errors.log")).remove_background_from_img_file(str(local))


def test_removebg_options_and_error_shape(server, photo):
    path, mask = photo
    post = lambda data, key=KEY: requests.post(server + "/v1.0/removebg", headers={"X-Api-Key": key},  # noqa: E731
                                               files={"image_file": (path.name, path.read_bytes())}, data=data)
    answer = post({"format": "zip", "bg_color": "00b900"})
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        assert sorted(archive.namelist()) == ["alpha.png", "color.jpg"]
    alpha = post({"channels": "alpha"})
    assert Image.open(io.BytesIO(alpha.content)).mode == "L"
    assert answer.headers["X-Width"] == str(mask.shape[1])
    jpg = post({"format": "jpg", "size": "preview"})
    assert Image.open(io.BytesIO(jpg.content)).format == "JPEG"
    refused = post({"format": "gif"})
    assert refused.status_code == 400 and refused.json()["errors"][0]["code"] == "invalid_parameters"
    assert post({}, key="nope").json()["errors"][0]["code"] == "auth_failed"
    missing = requests.post(server + "/v1.0/removebg", headers={"X-Api-Key": KEY}, data={"size": "auto"})
    assert missing.status_code == 400 and "image_file" in missing.json()["errors"][0]["title"]


def test_an_oversized_upload_gets_its_413(server):
    body = b"\0" * (3 << 20)  # 3 MiB against a 1 MiB limit, sent whole
    answer = requests.post(server + "/api/cutout", files={"file": ("big.jpg", body, "image/jpeg")}, timeout=60,
                           headers=AUTH)
    assert answer.status_code == 413 and "limit" in answer.json()["detail"]


def test_pixel_budget_is_counted_before_decoding(server, photo):
    bomb = io.BytesIO()
    Image.new("L", (8000, 8000)).save(bomb, "PNG")  # 64 Mpx in a few KB
    answer = requests.post(server + "/api/cutout", files={"file": ("car.jpg", photo[0].read_bytes(), "image/jpeg"),
                                                          "background": ("back.png", bomb.getvalue(), "image/png")},
                           headers=AUTH)
    assert answer.status_code == 413 and "pixels" in answer.json()["detail"]


def test_other_origins_and_hosts_are_refused(server, photo):
    files = {"file": ("car.jpg", photo[0].read_bytes(), "image/jpeg")}
    foreign = requests.post(server + "/api/cutout", files=files, headers={"Origin": "http://evil.example", **AUTH})
    assert foreign.status_code == 403 and "evil.example" in foreign.json()["detail"]
    same = requests.post(server + "/api/cutout", files=files, headers={"Origin": server, **AUTH})
    allowed = requests.post(server + "/api/cutout", files=files, headers={"Origin": "http://allowed.example:8080",
                                                                          **AUTH})
    assert same.status_code == allowed.status_code == 200
    rebound = requests.get(server + "/", headers={"Host": "attacker.example"})
    assert rebound.status_code == 403


def test_security_headers_and_docs(server):
    page = requests.get(server + "/")
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert "href=\"/docs\"" not in page.text and requests.get(server + "/docs").status_code == 404


def test_messages_carry_no_python_internals(server):
    answer = requests.post(server + "/api/cutout", data={"file": "not a file"}, headers=AUTH)
    assert answer.status_code == 422
    assert "file" in answer.json()["detail"] and "0x" not in answer.text and "<" not in answer.text


def test_slow_clients_are_cut_off(server):
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as slow:
        slow.sendall(b"POST /api/cutout HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finished
        slow.settimeout(10)
        started = time.monotonic()
        assert slow.recv(1024) == b""  # closed by the server
        assert time.monotonic() - started < 5
    with socket.create_connection((host, int(port))) as slow:  # headers sent, body never comes
        slow.sendall(b"POST /api/cutout HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Api-Key: test-key\r\n"
                     b"Content-Type: multipart/form-data; "
                     b"boundary=x\r\nContent-Length: 1000\r\n\r\n--x\r\n")
        slow.settimeout(15)
        assert b" 408 " in slow.recv(4096).split(b"\r\n")[0] + b" "
    assert requests.get(server + "/health", timeout=5).json() == {"status": "ok"}

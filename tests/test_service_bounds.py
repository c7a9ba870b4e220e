"""The service on a real socket: a remove.bg client, and the bounds a hostile client meets."""

import base64
import io
import signal
import socket
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
requests = pytest.importorskip("requests")

from live_server import live_server  # noqa: E402

from carmask.serve import create_app  # noqa: E402
from carmask.serve.server import timed_protocol  # noqa: E402

KEY = "test-key"
AUTH = {"X-Api-Key": KEY}


@pytest.fixture(scope="module")
def server(rgb_predictor):
    """The app under uvicorn (the serve verb's protocol, short timeouts) on a free loopback port."""
    app = create_app(
        rgb_predictor,
        max_upload_bytes=1 << 20,
        api_key=KEY,
        hosts={"127.0.0.1", "localhost"},
        allow_origins=["http://allowed.example:8080"],
        body_timeout=2.0,
    )
    with live_server(app, http=timed_protocol(header_timeout=1.0)) as url:
        yield url


@pytest.fixture(scope="module")
def photo(synth_view):
    return synth_view  # (path, mask)


def test_unmodified_removebg_client_gets_a_cutout(server, photo, tmp_path, monkeypatch):
    """The `removebg` package from PyPI, as published: only its endpoint is pointed
    here. Its three calls: a file, a base64 photo of 0.9 MB, and a URL (refused, never fetched)."""
    removebg = pytest.importorskip("removebg")
    import removebg.removebg as client_module

    monkeypatch.setattr(client_module, "API_ENDPOINT", server + "/v1.0/removebg")
    client = removebg.RemoveBg(KEY, str(tmp_path / "errors.log"))
    path, mask = photo
    local = tmp_path / path.name
    local.write_bytes(path.read_bytes())
    client.remove_background_from_img_file(str(local))
    image = Image.open(str(local) + "_no_bg.png")
    assert image.format == "PNG" and image.mode == "RGBA" and image.size == (mask.shape[1], mask.shape[0])
    alpha = np.asarray(image)[..., 3].astype(float)
    assert alpha[mask].mean() > 0.8 * 255 and alpha[~mask].mean() < 0.2 * 255

    noisy = io.BytesIO()  # 0.9 MB: its base64 is over a megabyte, within this server's 1 MiB photo limit
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (900, 1200, 3), dtype=np.uint8)).save(
        noisy, "JPEG", quality=90
    )
    assert 0.75 * 2**20 < len(noisy.getvalue()) < 2**20
    client.remove_background_from_base64_img(
        base64.b64encode(noisy.getvalue()).decode(), new_file_name=str(tmp_path / "b64.png")
    )
    result = Image.open(tmp_path / "b64.png")
    assert result.format == "PNG" and result.width * result.height <= 250_000  # size=regular: 0.25 Mpx

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        with pytest.raises(requests.HTTPError) as refused:
            client.remove_background_from_img_url(
                f"http://127.0.0.1:{listener.getsockname()[1]}/car.jpg", new_file_name=str(tmp_path / "url.png")
            )
        with pytest.raises(BlockingIOError):  # nobody connected
            listener.accept()
    assert refused.value.response.status_code == 400
    assert refused.value.response.json()["errors"][0]["code"] == "url_not_supported"
    assert not (tmp_path / "url.png").exists()
    with pytest.raises(requests.HTTPError):  # a wrong key is refused
        removebg.RemoveBg("wrong", str(tmp_path / "errors.log")).remove_background_from_img_file(str(local))


def test_removebg_options_and_error_shape(server, photo):
    path, mask = photo
    post = lambda data, key=KEY: requests.post(
        server + "/v1.0/removebg",
        headers={"X-Api-Key": key},  # noqa: E731
        files={"image_file": (path.name, path.read_bytes())},
        data=data,
    )
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
    answer = requests.post(
        server + "/api/cutout", files={"file": ("big.jpg", body, "image/jpeg")}, timeout=60, headers=AUTH
    )
    assert answer.status_code == 413 and "limit" in answer.json()["detail"]


def test_pixel_budget_is_counted_before_decoding(server, photo):
    bomb = io.BytesIO()
    Image.new("L", (8000, 8000)).save(bomb, "PNG")  # 64 Mpx in a few KB
    answer = requests.post(
        server + "/api/cutout",
        files={
            "file": ("car.jpg", photo[0].read_bytes(), "image/jpeg"),
            "background": ("back.png", bomb.getvalue(), "image/png"),
        },
        headers=AUTH,
    )
    assert answer.status_code == 413 and "pixels" in answer.json()["detail"]


def test_other_origins_and_hosts_are_refused(server, photo):
    files = {"file": ("car.jpg", photo[0].read_bytes(), "image/jpeg")}
    foreign = requests.post(server + "/api/cutout", files=files, headers={"Origin": "http://evil.example", **AUTH})
    assert foreign.status_code == 403 and "evil.example" in foreign.json()["detail"]
    same = requests.post(server + "/api/cutout", files=files, headers={"Origin": server, **AUTH})
    allowed = requests.post(
        server + "/api/cutout", files=files, headers={"Origin": "http://allowed.example:8080", **AUTH}
    )
    assert same.status_code == allowed.status_code == 200
    rebound = requests.get(server + "/", headers={"Host": "attacker.example"})
    assert rebound.status_code == 403


def test_security_headers_and_docs(server):
    page = requests.get(server + "/")
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    docs = requests.get(server + "/docs")
    assert docs.status_code == 200 and "frame-ancestors 'none'" in docs.headers["Content-Security-Policy"]


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
        slow.sendall(
            b"POST /api/cutout HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Api-Key: test-key\r\n"
            b"Content-Type: multipart/form-data; "
            b"boundary=x\r\nContent-Length: 1000\r\n\r\n--x\r\n"
        )
        slow.settimeout(15)
        assert b" 408 " in slow.recv(4096).split(b"\r\n")[0] + b" "
    assert requests.get(server + "/health", timeout=5).json() == {"status": "ok"}


# -- stopping -------------------------------------------------------------------------------------------


def _serve(rgb_model, drain_seconds=None):
    """The server in a process of its own (signals reach only a main thread) on a free port:
    `carmask serve`, or `carmask.serve.run` with `drain_seconds`."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = (
        [
            sys.executable,
            "-m",
            "carmask.cli",
            "serve",
            "--port",
            str(port),
            "--model",
            str(rgb_model),
            "--device",
            "cpu",
        ]
        if drain_seconds is None
        else [
            sys.executable,
            "-c",
            f"from carmask.serve import run; run(port={port}, model={str(rgb_model)!r}, "
            f"device='cpu', drain_seconds={drain_seconds})",
        ]
    )
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while True:
        assert process.poll() is None, process.stderr.read()
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=5).ok:
                return process, port
        except requests.ConnectionError:
            time.sleep(0.1)


def _slow_upload(port):
    """A POST whose body never finishes (the guard would answer it 408 after 60 s)."""
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(
        b"POST /api/cutout HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
        b"boundary=x\r\nContent-Length: 100000\r\n\r\n--x\r\n"
    )
    return slow


def _stop_listening(port, process):
    """Until the server has taken the first signal: it stops accepting connections. A connection
    caught in the closing listener's queue is reset rather than refused; both mean it stopped."""
    while True:
        try:
            socket.create_connection(("127.0.0.1", port)).close()
        except (ConnectionRefusedError, ConnectionResetError):
            return
        assert process.poll() is None
        time.sleep(0.05)


def _closed_unanswered(slow):
    """The server closed the connection without a word. A process that quits with the upload's
    bytes unread closes it with a reset rather than an end of stream; either is no answer."""
    slow.settimeout(30)
    try:
        return slow.recv(1024) == b""
    except ConnectionResetError:
        return True


def test_a_second_sigterm_quits_at_once(rgb_model):
    process, port = _serve(rgb_model)
    with _slow_upload(port) as slow:
        process.send_signal(signal.SIGTERM)
        _stop_listening(port, process)
        assert process.poll() is None  # draining: the slow upload holds it
        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == -signal.SIGTERM
        assert _closed_unanswered(slow)  # no 408: the drain was cut short
    assert "a second signal: quitting now" in process.stderr.read()


def test_the_drain_is_bounded(rgb_model):
    process, port = _serve(rgb_model, drain_seconds=1)
    with _slow_upload(port) as slow:
        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == -signal.SIGTERM
        assert _closed_unanswered(slow)  # no 408: the drain ended before the body timeout
    assert "timeout graceful shutdown exceeded" in process.stderr.read()

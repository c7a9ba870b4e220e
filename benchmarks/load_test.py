"""Load test for `carmask serve`: throughput, latency and the server's memory.

Starts the server (the `carmask serve` verb, in a subprocess) on 127.0.0.1,
posts a synthetic photo to /api/cutout from `--concurrency` threads until
`--requests` requests were sent or `--seconds` passed, whichever comes first,
and prints requests/s, latency p50/p90/p99 and the server process's RSS
before and after (and the peak seen while sampling).

    python benchmarks/load_test.py                       # shipped default models
    python benchmarks/load_test.py --model runs/x/best.pt --size 1918x1280 --requests 200
    python benchmarks/load_test.py --adversarial     # the hostile cases, while normal requests run

--adversarial sends, while --concurrency clients post normal cut-outs: tiny
64-megapixel PNG backgrounds, a zip of 64-megapixel members, tiny zips that
unpack to 96 MiB, slow clients that never finish their headers, a 27 MiB upload, a POST from a foreign Origin,
one for a rebound Host name, an EPS file sent as a JPEG, two `file` parts, a remove.bg `bg_image_url`; it
checks each case's status code, /health latency throughout, and the server's
memory (peak, and back near idle afterwards).

Loopback only: the server binds 127.0.0.1 and the client talks to nothing else.
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from PIL import Image

HOST = "127.0.0.1"


def synthetic_photo(size: tuple[int, int], seed: int = 0) -> bytes:
    """A synthetic turntable view at (width, height), as JPEG bytes."""
    from carmask.synth import random_car, render_view, studio_background

    background = studio_background(*size, seed=seed)
    photo, _ = render_view(background, random_car(np.random.default_rng(seed)), 3, 16)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process: psutil if installed, else /proc/<pid>/status."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - the process is gone
        return None
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_server(port: int, model: str | None, device: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "carmask.cli", "serve", "--host", HOST, "--port", str(port), "--device", device]
    if model:
        command += ["--model", model]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(process: subprocess.Popen, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited ({process.returncode}):\n{process.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server did not answer /health within {timeout:.0f} s")


def bomb_png(side: int = 8000) -> bytes:
    """A 64-megapixel PNG of a few KB."""
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


def adversarial(url: str, photo: bytes, seconds: float) -> dict[str, tuple[int, list]]:
    """Each hostile case: (expected status, statuses seen). Runs them in threads."""
    import zipfile

    bomb = bomb_png()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(4):
            z.writestr(f"car_{i + 1:02d}.png", bomb)
    expanding = io.BytesIO()  # 100 KB that unpack to 96 MiB of non-photos
    with zipfile.ZipFile(expanding, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(4):
            z.writestr(f"car_{i + 1:02d}.jpg", b"\xff\xd8" + b"\0" * (24 * 2**20))
    eps = io.BytesIO()  # Pillow would hand it to Ghostscript, were it not restricted to photo formats
    Image.new("RGB", (64, 48)).save(eps, format="EPS")
    host, port = url.removeprefix("http://").split(":")
    seen: dict[str, tuple[int, list]] = {
        "64 Mpx PNG background": (413, []),
        "zip of 64 Mpx members": (413, []),
        "27 MiB upload": (413, []),
        "foreign Origin": (403, []),
        "zip unpacking 96 MiB": (422, []),
        "slow client (closed)": (0, []),
        "rebound Host": (403, []),
        "EPS as a JPEG": (422, []),
        "two file parts": (400, []),
        "bg_image_url": (400, []),
    }

    def post(case, path, **kwargs):
        try:
            with httpx.Client(timeout=120) as client:
                seen[case][1].append(client.post(url + path, **kwargs).status_code)
        except httpx.HTTPError as exc:
            seen[case][1].append(type(exc).__name__)

    def slow():
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /api/cutout HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            sock.settimeout(60)
            try:
                seen["slow client (closed)"][1].append(0 if sock.recv(1024) == b"" else "answered")
            except OSError:
                seen["slow client (closed)"][1].append("timeout")

    jobs = []
    for _ in range(4):
        jobs.append(
            lambda: post(
                "64 Mpx PNG background",
                "/api/cutout",
                files={"file": ("car.jpg", photo, "image/jpeg"), "background": ("b.png", bomb, "image/png")},
            )
        )
        jobs.append(
            lambda: post(
                "zip of 64 Mpx members",
                "/api/cutout-set",
                files={"files": ("set.zip", archive.getvalue(), "application/zip")},
            )
        )
    jobs += [
        lambda: post(
            "zip unpacking 96 MiB",
            "/api/cutout-set",
            files={"files": ("set.zip", expanding.getvalue(), "application/zip")},
        )
    ] * 16
    jobs += [
        lambda: post("27 MiB upload", "/api/cutout", files={"file": ("big.jpg", b"\0" * (27 * 2**20), "image/jpeg")})
    ] * 2
    jobs += [
        lambda: post(
            "foreign Origin",
            "/api/cutout",
            files={"file": ("car.jpg", photo, "image/jpeg")},
            headers={"Origin": "http://evil.example"},
        )
    ] * 2
    jobs += [
        lambda: post(
            "rebound Host",
            "/api/cutout",
            files={"file": ("car.jpg", photo, "image/jpeg")},
            headers={"Host": "attacker.example", "Origin": "http://attacker.example"},
        )
    ] * 2
    jobs += [
        lambda: post("EPS as a JPEG", "/api/cutout", files={"file": ("car.jpg", eps.getvalue(), "image/jpeg")})
    ] * 2
    jobs += [
        lambda: post(
            "two file parts",
            "/api/cutout",
            files=[("file", ("a.jpg", photo, "image/jpeg")), ("file", ("b.jpg", photo, "image/jpeg"))],
        )
    ] * 2
    jobs += [
        lambda: post(
            "bg_image_url",
            "/v1.0/removebg",
            files={"image_file": ("car.jpg", photo, "image/jpeg")},
            data={"bg_image_url": f"http://{host}:{port}/health"},
        )
    ] * 2
    jobs += [slow] * 100
    with ThreadPoolExecutor(32) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()
    return seen


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f} MiB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Shipped model name or checkpoint path (default: shipped defaults).")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--requests", type=int, default=500, help="Stop after this many requests.")
    parser.add_argument("--concurrency", type=int, default=8, help="Client threads.")
    parser.add_argument("--seconds", type=float, default=60, help="Stop after this long.")
    parser.add_argument("--size", default="1918x1280", help="Synthetic photo size, WxH.")
    parser.add_argument("--bg", default="transparent", help="Background sent with every request.")
    parser.add_argument("--port", type=int, default=0, help="Loopback port (default: a free one).")
    parser.add_argument("--adversarial", action="store_true", help="Also send the hostile cases (see above).")
    args = parser.parse_args(argv)

    from carmask.io import parse_size

    size = parse_size(args.size)
    photo = synthetic_photo(size)
    port = args.port or free_port()
    url = f"http://{HOST}:{port}"
    print(f"photo: synthetic {size[0]}x{size[1]} JPEG, {len(photo) / 1024:.0f} KB; server: {url}")

    server = start_server(port, args.model, args.device)
    try:
        wait_ready(server, url)
        # One request first: loads lazily created state, and shows whether the model copes at all.
        with httpx.Client(timeout=300) as client:
            first = client.post(
                url + "/api/cutout", files={"file": ("car_03.jpg", photo, "image/jpeg")}, data={"bg": args.bg}
            )
        if first.status_code != 200:
            print(f"the first request failed: {first.status_code} {first.text[:300]}", file=sys.stderr)
            return 1
        rss_before = rss_bytes(server.pid)
        peak = [rss_before or 0]
        timeline: list[tuple[int, int]] = []  # (requests finished, RSS)
        done = threading.Event()

        def sample():
            while not done.wait(0.25):
                rss = rss_bytes(server.pid) or 0
                peak[0] = max(peak[0], rss)
                timeline.append((len(latencies), rss))

        lock = threading.Lock()
        sent = [0]
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        stop_at = start + args.seconds

        def worker():
            with httpx.Client(timeout=300) as client:
                while True:
                    with lock:
                        if sent[0] >= args.requests or time.perf_counter() >= stop_at:
                            return
                        sent[0] += 1
                    t0 = time.perf_counter()
                    try:
                        status = client.post(
                            url + "/api/cutout",
                            data={"bg": args.bg},
                            files={"file": ("car_03.jpg", photo, "image/jpeg")},
                        ).status_code
                    except httpx.HTTPError:
                        status = -1
                    elapsed = time.perf_counter() - t0
                    with lock:
                        latencies.append(elapsed)
                        statuses[status] = statuses.get(status, 0) + 1

        health: list[float] = []

        def probe_health():
            with httpx.Client(timeout=30) as client:
                while not done.wait(0.5):
                    t0 = time.perf_counter()
                    try:
                        client.get(url + "/health")
                        health.append(time.perf_counter() - t0)
                    except httpx.HTTPError:
                        health.append(float("inf"))

        prober = threading.Thread(target=probe_health, daemon=True)
        prober.start()
        with ThreadPoolExecutor(args.concurrency + 1) as pool:
            futures = [pool.submit(worker) for _ in range(args.concurrency)]
            hostile = pool.submit(adversarial, url, photo, args.seconds) if args.adversarial else None
            for future in futures:
                future.result()
            cases = hostile.result() if hostile else {}
        wall = time.perf_counter() - start
        time.sleep(5)  # let the last responses be freed
        done.set()
        sampler.join()
        prober.join()
        rss_after = rss_bytes(server.pid)
        peak[0] = max(peak[0], rss_after or 0)

        ok = statuses.get(200, 0)
        print(
            f"requests: {len(latencies)} in {wall:.1f} s with {args.concurrency} clients "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(statuses.items()))})"
        )
        print(f"throughput: {len(latencies) / wall:.2f} requests/s ({ok / wall:.2f} successful/s)")
        ms = [x * 1000 for x in latencies]
        print(
            f"latency: p50 {percentile(ms, 50):.0f} ms, p90 {percentile(ms, 90):.0f} ms, "
            f"p99 {percentile(ms, 99):.0f} ms"
        )
        print(f"server RSS: before {mib(rss_before)}, after {mib(rss_after)}, peak {mib(peak[0] or None)}")
        if timeline:  # flat after warm-up means no per-request growth
            marks = [timeline[min(len(timeline) - 1, len(timeline) * q // 4)] for q in (1, 2, 3)]
            print("server RSS during the run: " + ", ".join(f"{mib(r)} after {n} requests" for n, r in marks))
        if health:
            print(
                f"/health while loaded: {len(health)} probes, worst {max(health) * 1000:.0f} ms, "
                f"median {percentile([h * 1000 for h in health], 50):.0f} ms"
            )
        good = ok == len(latencies)
        for case, (expected, statuses) in cases.items():
            right = all(status == expected for status in statuses)
            good &= right
            print(f"{case}: expected {expected}, got {dict(Counter(statuses))}{'' if right else '  <- WRONG'}")
        if args.adversarial:
            within = rss_after is not None and rss_before and rss_after <= 1.1 * rss_before
            bounded = peak[0] < 1.5 * 2**30
            print(f"memory: peak under 1.5 GiB: {bounded}; back within 10% of idle: {within}")
            good &= bool(within and bounded and health and max(health) < 2)
        return 0 if good else 1
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())

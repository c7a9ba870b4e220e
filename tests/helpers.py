"""Helpers shared by test modules (pytest puts this folder on the import path)."""

import itertools
from pathlib import Path

import pytest
from click.testing import CliRunner

from carmask.cli import main


def run_cli(*args, input=None):
    """`carmask ARGS...` in this process; an exception other than an exit propagates."""
    result = CliRunner().invoke(main, [str(a) for a in args], input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def interrupted_run(after_rows, *args):
    """`carmask predict ARGS...` stopped as Ctrl-C stops it, once `after_rows`
    rows were handed to the writer: what a killed run leaves behind."""
    from carmask.submission import SubmissionWriter

    write, count = SubmissionWriter.write, itertools.count(1)

    def write_then_stop(self, img, rle):
        write(self, img, rle)
        if next(count) >= after_rows:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SubmissionWriter, "write", write_then_stop)
        result = run_cli(*args)
    assert result.exit_code == 130, result.output
    return result


def partial_of(out):
    """The in-progress file of the submission `out`."""
    return out.with_name(out.name + ".partial")


def mirrored_share(images) -> float:
    """The share of `images` (the `network_inputs` fixture's) whose mirror image
    (flipped left to right) the network was also run on: 1 where test-time
    augmentation ran, 0 where it did not (no synthetic photo is symmetric)."""
    import torch

    images = [image for image in images if image.any()]  # not the zeros that pad a call
    if not images:
        raise AssertionError("the network was never run")
    return sum(any(torch.equal(image.flip(-1), other) for other in images) for image in images) / len(images)


def unrelated_photos(folder, size=(192, 128), seed=13):
    """Three photos of three cars in three places, named IMG_01..03.jpg as if
    one car's views: names that promise a set the photos do not keep."""
    import numpy as np
    from PIL import Image

    from carmask.synth import random_car, render_view, studio_background

    rng = np.random.default_rng(seed)
    places = [
        studio_background(*size, seed=2),
        (studio_background(*size, seed=3) * np.array([0.3, 0.6, 0.35])).astype(np.uint8),  # a green room
        np.broadcast_to(np.linspace(30, 200, size[0], dtype=np.float32)[None, :, None], (size[1], size[0], 3)).astype(
            np.uint8
        ),
    ]  # a dark-to-light wall
    for i, (place, view) in enumerate(zip(places, (2, 5, 9)), 1):
        photo, _ = render_view(place, random_car(rng), view, rng=rng)
        Image.fromarray(photo).save(folder / f"IMG_{i:02d}.jpg", quality=95)
    return sorted(folder.glob("IMG_*.jpg"))


def signalled_run(signals, after, *args, busy=False, ignore=(), go_on=False):
    """`carmask ARGS...` in a process of its own, sent `signals` (one or a
    list, one right after another) once it has handed out `after` outputs
    (rows or cut-outs; `paused.py`): (exit status, stderr). `busy`: the
    finishing thread is in torch work meanwhile; `ignore`: signals the
    process starts with ignored (as nohup starts it); `go_on`: let it go on
    after the signals."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    signals = [signals] if isinstance(signals, int) else list(signals)

    def ignoring():
        for signum in ignore:
            signal.signal(signum, signal.SIG_IGN)

    with tempfile.TemporaryDirectory() as scratch:
        marker = Path(scratch) / "paused"
        env = {**os.environ, **({"CARMASK_TEST_BUSY": "1"} if busy else {})}
        run = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("paused.py")), str(marker), str(after), *map(str, args)],
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=ignoring,
        )
        while not marker.exists() and run.poll() is None:
            time.sleep(0.02)
        for signum in signals:
            if run.poll() is None:
                run.send_signal(signum)
        if go_on:
            marker.with_suffix(".go").touch()
        stderr = run.communicate(timeout=600)[1]  # a guard against a hang, not a measure
    return run.returncode, os.fsdecode(stderr)


def remount(where: Path, options: str) -> None:
    """Change a test tmpfs's mount options ("ro", "size=4m")."""
    import subprocess

    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True, capture_output=True)

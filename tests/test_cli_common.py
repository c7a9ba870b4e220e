"""What every verb shares: exit status in --help, progress only on a terminal,
messages never glued to a bar."""

import io
import sys

import pytest
from helpers import run_cli

from carmask.cli import main


@pytest.mark.parametrize("verb", [None, *sorted(main.commands)])
def test_help_documents_the_exit_status(verb):
    result = run_cli(*([verb] if verb else []), "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Exit status: 0 done" in text
    assert "1 done, but some inputs were skipped" in text and "2 usage or input error" in text


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_messages_start_on_their_own_line_under_a_progress_bar(monkeypatch):
    from carmask.cli.common import fail, progress

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress(10, "testing") as bar:
        bar.update(3)
        fail("skipped x.jpg: not a readable image")
        bar.update(7)
    text = terminal.getvalue()
    assert "testing" in text  # a bar on a terminal
    before, _, _ = text.partition("carmask: skipped x.jpg")
    assert before.endswith(("\r", "\n"))  # the bar was cleared first, not glued to


def test_no_progress_off_a_terminal(monkeypatch):
    from carmask.cli.common import progress

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with progress(10, "testing") as bar:
        bar.update(10)
    assert stream.getvalue() == ""


@pytest.mark.parametrize(
    "args",
    [
        ("predict", "{photo}", "--overwrite", "-o"),
        ("export", "seed", "--overwrite", "-o"),
        ("cutout", "{photo}", "--overwrite", "-o"),
    ],
)
def test_an_output_that_is_no_regular_file_is_never_replaced(tmp_path, args):
    """-o /dev/null --overwrite, run as root, would have replaced the device
    with a file: a pipe stands in for it here."""
    import os

    import numpy as np
    from PIL import Image

    photo = tmp_path / "car.jpg"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(photo)
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    result = run_cli(*[a.format(photo=photo) for a in args], pipe)
    assert result.exit_code == 2, result.output
    assert f"{pipe} is not a regular file" in result.stderr
    assert pipe.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["car.jpg", "pipe.png"]


@pytest.mark.slow
def test_a_result_that_stdout_cannot_take_is_a_sentence(tmp_path):
    """`carmask models > /dev/full`: exit 2 and a sentence, no traceback."""
    import os
    import subprocess

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "carmask", "models"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "carmask: cannot write standard output: No space left on device"


@pytest.mark.parametrize("verb", ["predict", "evaluate", "cutout"])
def test_batch_size_below_one_is_a_usage_error(tmp_path, verb):
    result = run_cli(verb, tmp_path, "--batch-size", "0", *(() if verb == "evaluate" else ("-o", tmp_path / "o")))
    assert result.exit_code == 2 and "'--batch-size': 0 is not in the range x>=1" in result.output


@pytest.mark.parametrize("args", [("predict", "{photo}", "-o"), ("export", "seed", "-o")])
def test_an_output_file_named_as_a_folder_is_refused(tmp_path, args):
    """-o out/ wrote a file named out (and said "wrote out/")."""
    import numpy as np
    from PIL import Image

    photo = tmp_path / "car.jpg"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(photo)
    result = run_cli(*[a.format(photo=photo) for a in args], f"{tmp_path}/out/")
    assert result.exit_code == 2 and f"{tmp_path}/out/ names a folder (it ends with /)" in result.stderr
    assert not (tmp_path / "out").exists()

"""What a careful Unix tool does, tried on `predict` and `cutout`: standard
streams closed or full, terminals, nohup, a second Ctrl-C, a killed run's
temporary files, a disk that fills up in the middle of cut-outs, names that
are no UTF-8."""

import errno
import os
import re
import signal
import subprocess
import sys
import threading

import pytest
from helpers import partial_of, run_cli, signalled_run

pytestmark = pytest.mark.slow  # the quick run (-m "not slow") leaves this module out

MODEL = ("--model", "seed", "--device", "cpu")
CARMASK = [sys.executable, "-m", "carmask"]


@pytest.fixture(scope="module")
def photos(small_cars):
    """Two small synthetic cars of 16 views (96x64); `full`: conftest's."""
    return small_cars(2, seed=9) / "train"


def files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_closed_stderr_never_sends_messages_into_the_submission_on_stdout(photos, full):
    """`predict -o - 2>&-`: tqdm wrote the messages to stdout, into the CSV; exit 2."""
    done = subprocess.run(
        [*CARMASK, "predict", str(photos), "-o", "-", *MODEL], stdout=subprocess.PIPE, preexec_fn=lambda: os.close(2)
    )
    assert done.returncode == 0
    assert done.stdout == (full / "full.csv").read_bytes()


def test_a_full_stderr_loses_the_messages_not_the_run(photos, tmp_path):
    """`predict ... 2>/dev/full`: the first message (a skipped photo) stopped
    the run, blamed the submission ("cannot write s.csv") and left a partial file."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    (tmp_path / "in").mkdir()
    for photo in sorted(photos.iterdir())[:16]:
        os.link(photo, tmp_path / "in" / photo.name)
    (tmp_path / "in" / "junk.jpg").write_text("not a photo")
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [*CARMASK, "predict", str(tmp_path / "in"), "-o", str(tmp_path / "s.csv"), *MODEL], stderr=full
        )
    assert done.returncode == 1  # a photo was skipped, though it could not be said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "s.csv"]
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 17


@pytest.mark.parametrize("args", [("models",), ("predict", "{photos}", "-o", "-", *MODEL)])
def test_a_closed_stdout_is_a_sentence(photos, args):
    """`carmask models >&-`: a traceback (AttributeError: 'NoneType' object has no attribute 'flush')."""
    done = subprocess.run(
        [*CARMASK, *[a.format(photos=photos) for a in args]],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.close(1),
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "carmask: cannot write standard output: Bad file descriptor"


def on_a_terminal(command, stream):
    """`command` with its stdin or stdout (`stream`: 0 or 1) a terminal: (exit
    status, stderr, what reached the terminal)."""
    import pty
    import select

    master, slave = pty.openpty()
    run = subprocess.Popen(
        command,
        stdin=slave if stream == 0 else subprocess.DEVNULL,
        stdout=slave if stream == 1 else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(slave)
    stderr, shown = run.communicate(timeout=600)[1], b""
    while select.select([master], [], [], 0)[0]:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # the terminal's other side is gone
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    return run.returncode, stderr, shown


def test_a_cutout_is_never_written_to_a_terminal(photos):
    """`cutout photo -o -` on a terminal: 740 KB of PNG bytes on the screen."""
    status, stderr, shown = on_a_terminal([*CARMASK, "cutout", str(sorted(photos.iterdir())[0]), "-o", "-"], 1)
    assert status == 2 and "-o - would write a PNG to the terminal" in stderr, stderr
    assert b"PNG" not in shown


def test_a_photo_is_never_waited_for_on_a_terminal(tmp_path):
    """`cutout - -o x.png` with a terminal as stdin waited there, silently."""
    status, stderr, _ = on_a_terminal([*CARMASK, "cutout", "-", "-o", str(tmp_path / "x.png")], 0)
    assert status == 2 and "reads a photo from standard input, which is a terminal" in stderr, stderr


def test_a_disk_that_fills_up_stops_the_cutouts_at_once_and_a_rerun_finishes_them(photos, full, tmpfs):
    """It went on, photo after photo, each 'skipped (No space left on device)', exit 1."""
    from helpers import remount

    disk = tmpfs("48k")
    result = run_cli("cutout", photos, "-o", disk / "cut", *MODEL)
    assert result.exit_code == 2, result.output
    assert re.fullmatch(
        rf"carmask: cannot write {re.escape(str(disk))}/cut/\S+: No space left on device; the "
        rf"\d+ cut-out\(s\) written are kept: run the same command again to continue",
        result.stderr.strip().splitlines()[-1],
    ), result.stderr
    assert "skipped" not in result.stderr
    written = files(disk / "cut")  # whole cut-outs, and no temporary file
    assert written and all(data == (full / "cut" / name).read_bytes() for name, data in written.items())
    remount(disk, "size=16m")
    assert run_cli("cutout", photos, "-o", disk / "cut", *MODEL).exit_code == 0
    assert files(disk / "cut") == files(full / "cut")


def test_a_full_disk_without_a_tmpfs_stops_the_cutouts_too(photos, tmp_path, monkeypatch):
    from carmask.cli import cutout

    save, calls = cutout._save, iter(range(100))

    def filling(path, image, replace):
        if next(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        save(path, image, replace)

    monkeypatch.setattr(cutout, "_save", filling)
    before = set(threading.enumerate())
    result = run_cli("cutout", photos, "-o", tmp_path / "cut", *MODEL)
    assert result.exit_code == 2 and "skipped" not in result.stderr
    assert "No space left on device; the 3 cut-out(s) written are kept" in result.stderr
    assert len(list((tmp_path / "cut").iterdir())) == 3
    # the stopped run's decoding and finishing threads ended with it (its traceback kept them alive)
    assert not [t.name for t in set(threading.enumerate()) - before if t.name.startswith("carmask-")]


def test_nohup_keeps_sighup_ignored(photos, full, tmp_path):
    """A run started with SIGHUP ignored (nohup) goes on when the terminal hangs up."""
    out = tmp_path / "s.csv"
    status, stderr = signalled_run(
        signal.SIGHUP, 5, "predict", photos, "-o", out, *MODEL, ignore=[signal.SIGHUP], go_on=True
    )
    assert status == 0, stderr
    assert out.read_bytes() == (full / "full.csv").read_bytes()


@pytest.mark.parametrize("verb", ["predict", "cutout"])
def test_a_second_ctrl_c_while_the_first_is_cleaned_up_changes_nothing(photos, full, tmp_path, verb):
    """The second Ctrl-C cut the cleanup short: rows not written, a thread
    left in torch (SIGABRT)."""
    out = tmp_path / ("s.csv" if verb == "predict" else "cut")
    status, stderr = signalled_run(
        [signal.SIGINT, signal.SIGINT], 20, verb, photos, "-o", out, *MODEL, busy=verb == "cutout"
    )
    assert status == 130 and "terminate called" not in stderr and "Traceback" not in stderr, stderr
    if verb == "predict":
        assert len(partial_of(out).read_text().splitlines()) == 21  # the header and every row handed out
    else:
        assert len(files(out)) == 20


def test_a_killed_runs_temporary_file_is_removed_by_the_next_run_a_live_one_kept(photos, tmp_path):
    """SIGKILL in the middle of writing a cut-out left .NAME.png.XXXX.tmp, which no rerun removed."""
    out = tmp_path / "cut"
    out.mkdir()
    write = (
        "import os, sys; from pathlib import Path; from carmask.files import atomic_write\n"
        "def half(tmp):\n"
        "    tmp.write_bytes(b'half a PNG')\n"
        "    if sys.argv[2] == 'kill': os.kill(os.getpid(), 9)\n"
        "    print('writing', flush=True); sys.stdin.read()\n"
        "atomic_write(Path(sys.argv[1]), half)\n"
    )
    killed = subprocess.run([sys.executable, "-c", write, str(out / "a.png"), "kill"])
    assert killed.returncode == -9
    live = subprocess.Popen(
        [sys.executable, "-c", write, str(out / "b.png"), "live"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert live.stdout.readline() == "writing\n"  # it holds its temporary file
    try:
        temporaries = sorted(p.name for p in out.iterdir())
        assert len(temporaries) == 2 and all(name.endswith(".carmask-tmp") for name in temporaries)
        result = run_cli("cutout", photos, "-o", out, *MODEL)
        assert result.exit_code == 0, result.output
        assert "removed 1 temporary file(s) that a killed run left in" in result.stderr
        left = [p.name for p in out.iterdir() if p.name.endswith(".carmask-tmp")]
        assert left == [name for name in temporaries if name.startswith(".b.png")]
    finally:
        live.communicate("")
    assert (out / "b.png").read_bytes() == b"half a PNG" and not any(p.name.startswith(".") for p in out.iterdir())


def test_a_photo_named_with_bytes_that_are_no_utf8_is_cut_out_under_the_same_bytes(photos, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    os.link(sorted(photos.iterdir())[0], os.path.join(os.fsencode(folder), b"caf\xe9.jpg"))
    done = subprocess.run(
        [*CARMASK, "cutout", str(folder), "-o", str(tmp_path / "cut"), "--device", "cpu"], capture_output=True
    )
    assert done.returncode == 0, done.stderr
    assert os.listdir(os.fsencode(tmp_path / "cut")) == [b"caf\xe9.png"]
    done = subprocess.run(
        [*CARMASK, "cutout", str(folder), "-o", str(tmp_path / "cut"), "--device", "cpu"], capture_output=True
    )
    assert b"kept 1 existing" in done.stderr

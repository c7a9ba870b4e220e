import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from carmask.files import atomic_write
from carmask.rle import encode, run_boundaries
from carmask.submission import OtherRun, OutputInUse, SubmissionWriter, read_submission


def masks(count):
    rng = np.random.default_rng(0)
    return [rng.random((9, 11)) < 0.5 for _ in range(count)]


def test_background_writer_keeps_order_and_formats_boundaries(tmp_path):
    out = tmp_path / "sub.csv"
    writer = SubmissionWriter(out, queue_size=4)
    for i, mask in enumerate(masks(300)):  # text and boundary arrays alike
        writer.write(f"img{i}.jpg", encode(mask) if i % 2 else run_boundaries(mask))
    writer.finish()
    rows = read_submission(out)
    assert list(rows) == [f"img{i}.jpg" for i in range(300)]
    assert list(rows.values()) == [encode(m) for m in masks(300)]


def test_close_keeps_queued_rows_for_a_resume(tmp_path):
    out = tmp_path / "sub.csv"
    writer = SubmissionWriter(out)
    for i in range(50):
        writer.write(f"img{i}.jpg", "1 2")
    writer.close()
    assert not out.exists()
    resumed = SubmissionWriter(out)
    assert resumed.done == {f"img{i}.jpg" for i in range(50)}
    resumed.finish()
    assert len(read_submission(out)) == 50


def test_a_failing_disk_is_reported_not_swallowed(tmp_path, monkeypatch):
    import errno

    from carmask import submission

    writer = SubmissionWriter(tmp_path / "sub.csv")
    writer.write("a.jpg", "1 2")
    writer.flush()

    def full(stream, data):
        stream.write(data[:5])  # part of a row, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(submission, "write_all", full)
    writer.write("b.jpg", "3 4")
    with pytest.raises(OSError) as caught:
        writer.flush()
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(writer.partial)
    writer.close()  # never raises for the disk it could not write
    monkeypatch.undo()
    resumed = SubmissionWriter(tmp_path / "sub.csv")
    assert resumed.done == {"a.jpg"}  # the cut-short row cut off
    resumed.write("b.jpg", "3 4")
    resumed.finish()
    assert read_submission(tmp_path / "sub.csv") == {"a.jpg": "1 2", "b.jpg": "3 4"}


def test_long_rows_of_carmasks_own_output_are_read(tmp_path):
    out = tmp_path / "sub.csv"
    stripes = np.zeros((1280, 1918), dtype=bool)
    stripes[:, ::2] = True  # one run per other pixel: a row of ~3 MB
    writer = SubmissionWriter(out)
    writer.write("car_01.jpg", run_boundaries(stripes))
    writer.finish()
    assert read_submission(out)["car_01.jpg"] == encode(stripes)


RUN = {"photos": {"/p/a_01.jpg": [10, 1]}, "model": {"name": "seed", "sha256": "0"}, "output_size": None, "tta": False}


def test_a_second_writer_on_the_same_output_refuses(tmp_path):
    out = tmp_path / "sub.csv"
    first = SubmissionWriter(out, run=RUN)
    with pytest.raises(OutputInUse, match="another carmask run is writing"):
        SubmissionWriter(out, run=RUN, overwrite=True)
    first.write("a_01.jpg", "1 2")
    first.finish()
    assert read_submission(out) == {"a_01.jpg": "1 2"}


def test_the_lock_dies_with_a_killed_process(tmp_path):
    out = tmp_path / "sub.csv"
    script = (
        f"import os, json; from carmask.submission import SubmissionWriter\n"
        f"w = SubmissionWriter({str(out)!r}, run=json.loads({json.dumps(RUN)!r}))\n"
        f"w.write('a_01.jpg', '1 2'); w.flush(); os.kill(os.getpid(), 9)\n"
    )
    assert subprocess.run([sys.executable, "-c", script]).returncode == -9
    resumed = SubmissionWriter(out, run=RUN)
    assert resumed.done == {"a_01.jpg"} and resumed.kept == 1
    resumed.finish()


def test_another_runs_partial_file_is_refused_naming_the_difference(tmp_path):
    out = tmp_path / "sub.csv"
    first = SubmissionWriter(out, run=RUN)
    first.write("a_01.jpg", "1 2")
    first.close()
    other = {**RUN, "photos": {"/p/b_01.jpg": [10, 1]}, "output_size": [1918, 1280]}
    with pytest.raises(OtherRun) as caught:
        SubmissionWriter(out, run=other)
    assert "1 photo added (b_01.jpg); 1 photo removed (a_01.jpg)" in str(caught.value)
    assert "output size was each photo's own, now 1918x1280" in str(caught.value)
    fresh = SubmissionWriter(out, run=other, overwrite=True)
    assert fresh.done == set()
    fresh.write("b_01.jpg", "3 4")
    fresh.finish()
    assert read_submission(out) == {"b_01.jpg": "3 4"}


def test_files_are_created_with_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "x.txt", lambda tmp: tmp.write_text("x"))
        writer = SubmissionWriter(tmp_path / "sub.csv")
        writer.finish()
    finally:
        os.umask(old)
    for name in ("x.txt", "sub.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640


def test_a_run_that_wrote_no_row_leaves_nothing_to_trip_on(tmp_path):
    out = tmp_path / "sub.csv"
    SubmissionWriter(out, run=RUN).close()  # e.g. the model failed to load
    assert list(tmp_path.iterdir()) == []
    other = {**RUN, "tta": True}
    (tmp_path / "sub.csv.partial").write_text("img,rle_mask\n")  # a header, no row
    (tmp_path / "sub.csv.partial.json").write_text(json.dumps(RUN))
    assert SubmissionWriter(out, run=other).done == set()


def test_names_with_commas_and_quotes_stay_whole_in_the_csv_and_on_resume(tmp_path):
    """'a,b.jpg' was written bare: every CSV reader (and the resume) took 'a' for its name."""
    import csv

    out, names = tmp_path / "s.csv", ["a,b.jpg", 'q"x.jpg', "plain.jpg"]
    writer = SubmissionWriter(out, run={"photos": {}})
    for name in names[:2]:
        writer.write(name, "1 2")
    writer.close()  # interrupted
    resumed = SubmissionWriter(out, run={"photos": {}})
    assert resumed.done == set(names[:2])
    resumed.write(names[2], "")
    resumed.finish()
    with open(out, newline="") as f:
        assert [row[0] for row in csv.reader(f)][1:] == names
    assert read_submission(out) == {"a,b.jpg": "1 2", 'q"x.jpg': "1 2", "plain.jpg": ""}

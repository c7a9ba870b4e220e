import numpy as np
import pytest

from carmask.rle import encode, run_boundaries
from carmask.submission import SubmissionWriter, read_submission


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


def test_a_failing_disk_is_reported_not_swallowed(tmp_path):
    writer = SubmissionWriter(tmp_path / "sub.csv")
    writer._file.close()  # what a vanished disk looks like to the writer thread
    writer.write("a.jpg", "1 2")
    with pytest.raises(OSError, match="could not write"):
        writer.flush()

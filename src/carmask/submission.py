"""The Kaggle submission CSV (`img,rle_mask`), written so that nothing is lost.

Rows go to `<out>.partial` in prediction order and are flushed as they come;
the finished file appears under its own name only when every row is in. A run
that was killed resumes from the partial file: it holds a prefix of the rows
of an uninterrupted run, so the final file is identical.

A background thread formats and writes the rows, so the prediction loop never
waits on the disk or on turning run boundaries into text.
"""
from __future__ import annotations

import csv
import os
import queue
import threading
from pathlib import Path

import numpy as np

from carmask.rle import encode_boundaries

HEADER = "img,rle_mask\n"


class SubmissionWriter:
    def __init__(self, path, overwrite: bool = False, queue_size: int = 256):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass --overwrite to replace it")
        self.done = self._recover()
        self._file = open(self.partial, "a", newline="")
        if not self.done and self._file.tell() == 0:
            self._file.write(HEADER)
        self._rows: queue.Queue = queue.Queue(queue_size)  # bounded: memory stays bounded too
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write_rows, name="submission-writer", daemon=True)
        self._thread.start()

    def _recover(self) -> set[str]:
        """Names already written by a killed run; a half-written last row is cut off."""
        if not self.partial.exists():
            return set()
        data = self.partial.read_bytes()
        if not data.startswith(HEADER.encode()):
            self.partial.unlink()
            return set()
        complete = data[:data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            with open(self.partial, "r+b") as f:
                f.truncate(len(complete))
        lines = complete.decode().splitlines()[1:]
        return {line.split(",", 1)[0] for line in lines}

    def write(self, img: str, rle: str | np.ndarray) -> None:
        """Queue a row; `rle` is the RLE text or the mask's run boundaries."""
        self._check()
        self._rows.put((img, rle))
        self.done.add(img)

    def _write_rows(self) -> None:
        while (row := self._rows.get()) is not None:
            try:
                if self._error is None:
                    img, rle = row
                    self._file.write(f"{img},{rle if isinstance(rle, str) else encode_boundaries(rle)}\n")
                    if self._rows.empty():
                        self._file.flush()
            except BaseException as exc:  # reported to the caller; keep taking rows so it never blocks
                self._error = exc
            finally:
                self._rows.task_done()
        self._rows.task_done()

    def _check(self) -> None:
        if self._error is not None:
            raise OSError(f"could not write {self.partial}: {self._error}") from self._error

    def flush(self) -> None:
        """Wait until every queued row is on disk."""
        self._rows.join()
        self._check()
        self._file.flush()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._rows.put(None)
            self._thread.join()

    def finish(self) -> Path:
        """Close and publish: the partial file becomes the submission, atomically."""
        self._stop()
        self._check()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.partial, self.path)
        return self.path

    def close(self) -> None:
        """Stop without publishing: rows already queued are written, and the
        partial file stays for a resume."""
        self._stop()
        if not self._file.closed:
            self._file.flush()
            self._file.close()


def read_submission(path) -> dict[str, str]:
    """{img: rle} from a submission CSV."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != ["img", "rle_mask"]:
            raise ValueError(f"{path}: the header must be img,rle_mask, found {header}")
        return {row[0]: row[1] if len(row) > 1 else "" for row in reader}

"""The Kaggle submission CSV (`img,rle_mask`), written so that nothing is lost.

Rows go to `<out>.partial` in prediction order and are flushed as they come;
the finished file appears under its own name only when every row is in. A run
that was killed resumes from the partial file: it holds a prefix of the rows
of an uninterrupted run, so the final file is identical.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

HEADER = "img,rle_mask\n"


class SubmissionWriter:
    def __init__(self, path, overwrite: bool = False):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass --overwrite to replace it")
        self.done = self._recover()
        self._file = open(self.partial, "a", newline="")
        if not self.done and self._file.tell() == 0:
            self._file.write(HEADER)

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

    def write(self, img: str, rle: str) -> None:
        self._file.write(f"{img},{rle}\n")
        self.done.add(img)

    def flush(self) -> None:
        self._file.flush()

    def finish(self) -> Path:
        """Close and publish: the partial file becomes the submission, atomically."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.partial, self.path)
        return self.path

    def close(self) -> None:
        """Stop without publishing (the partial file stays for a resume)."""
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

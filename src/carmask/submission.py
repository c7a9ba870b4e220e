"""The Kaggle submission CSV (`img,rle_mask`), written so that nothing is lost or mixed.

Rows go to `<out>.partial` in prediction order and are flushed as they come;
the finished file appears under its own name, atomically, only when every row
is in. Beside it, `<out>.partial.json` records what the run is for
(`run_record`: the photos with their sizes and modification times, the model,
the output size and the options). A killed run resumes only when the same run
is asked for: the partial file then holds a prefix of the rows of an
uninterrupted run, so the final file is identical. Any other run refuses and
names the difference (`OtherRun`), unless told to start afresh (`overwrite`).
While a run writes, it holds a lock on the partial file (flock: it dies with
the process), so a second run on the same output refuses at once (`OutputInUse`).

A background thread formats and writes the rows, so the prediction loop never
waits on the disk or on turning run boundaries into text.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import sys
import threading
from pathlib import Path
from typing import Iterable

import numpy as np

from carmask.io import atomic_write
from carmask.rle import encode_boundaries
from carmask.views import MIN_VIEWS

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None

HEADER = "img,rle_mask\n"
RECORD_FORMAT = "carmask-run-1"


class OutputInUse(RuntimeError):
    """Another run holds the output."""


class OtherRun(ValueError):
    """The in-progress file belongs to a run with other inputs or settings."""


class SubmissionWriter:
    """Rows of one run to `path` (or to stdout for "-": nothing to resume there).

    `run`: what the run is for (`run_record`), kept beside the partial file and
    compared on a resume. `done`: names already written; `kept`: how many of
    them an interrupted run had written.
    """

    def __init__(self, path, overwrite: bool = False, run: dict | None = None, queue_size: int = 256):
        self.run = dict(run or {})
        if str(path) == "-":
            self.path = self.partial = self.record = None
            self.done: set[str] = set()
            self._file = sys.stdout
            self._file.write(HEADER)
        else:
            self.path = Path(path)
            self.partial = self.path.with_name(self.path.name + ".partial")
            self.record = self.path.with_name(self.path.name + ".partial.json")
            if self.path.exists() and not overwrite:
                raise FileExistsError(f"{self.path} exists; pass --overwrite to replace it")
            fd = self._lock()
            try:
                self.done = self._start(fd, overwrite)
            except BaseException:
                os.close(fd)
                raise
            self._file = os.fdopen(fd, "a", newline="", encoding="utf-8")
        self.kept = len(self.done)
        self._rows: queue.Queue = queue.Queue(queue_size)  # bounded: memory stays bounded too
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write_rows, name="submission-writer", daemon=True)
        self._thread.start()

    # -- starting: lock, then afresh or resume ---------------------------------
    def _lock(self) -> int:
        """Open the partial file and hold its lock; refuse if another run holds it."""
        while True:
            fd = os.open(self.partial, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.path.samestat(os.fstat(fd), os.stat(self.partial)):
                    return fd
            except BlockingIOError:
                os.close(fd)
                raise OutputInUse(f"another carmask run is writing {self.path} (it holds {self.partial}); "
                                  f"wait for it to finish, or stop it") from None
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # a run that was finishing moved the file away: lock the new one

    def _start(self, fd: int, overwrite: bool) -> set[str]:
        """Names already written (a resume), or none after starting afresh."""
        empty = os.fstat(fd).st_size <= len(HEADER)  # no row: nothing to keep
        if self.path.exists() and not overwrite:  # a run finished while this one started
            if empty and not self.record.exists():
                self.partial.unlink()
            raise FileExistsError(f"{self.path} exists; pass --overwrite to replace it")
        if not empty and not overwrite:
            recorded = self._recorded()
            if recorded is None:
                raise OtherRun(f"{self.partial} does not say which run wrote it; pass --overwrite to "
                               f"start afresh")
            changes = differences(recorded, self.run)
            if changes:
                raise OtherRun(f"{self.partial} is an unfinished run of something else: "
                               f"{'; '.join(changes)}. Run that command again to finish it, "
                               f"or pass --overwrite to start afresh")
            done = self._recover(fd)
            if done is not None:
                return done
        os.ftruncate(fd, 0)
        atomic_write(self.record, lambda tmp: tmp.write_text(json.dumps(self.run)))
        os.write(fd, HEADER.encode())
        return set()

    def _recorded(self) -> dict | None:
        try:
            return json.loads(self.record.read_text())
        except (OSError, ValueError):
            return None

    def _recover(self, fd: int) -> set[str] | None:
        """Names in the partial file (a half-written last row is cut off), or
        None when it is not a submission."""
        names: set[str] = set()
        with open(self.partial, "rb") as f:
            if f.readline() != HEADER.encode():
                return None
            end = f.tell()
            for line in f:
                if not line.endswith(b"\n"):
                    break
                names.add(split_row(line.decode("utf-8", "replace"))[0])
                end += len(line)
        os.ftruncate(fd, end)
        return names

    # -- rows ----------------------------------------------------------------
    def write(self, img: str, rle: str | np.ndarray) -> None:
        """Queue a row; `rle` is the RLE text or the mask's run boundaries."""
        self._check()
        self._rows.put((img, rle))
        self.done.add(img)

    @property
    def written(self) -> int:
        """Rows this run added."""
        return len(self.done) - self.kept

    def _write_rows(self) -> None:
        while (row := self._rows.get()) is not None:
            try:
                if self._error is None:
                    img, rle = row
                    self._file.write(f"{_quoted(img)},{rle if isinstance(rle, str) else encode_boundaries(rle)}\n")
                    if self._rows.empty():
                        self._file.flush()
            except BaseException as exc:  # reported to the caller; keep taking rows so it never blocks
                self._error = exc
            finally:
                self._rows.task_done()
        self._rows.task_done()

    def _check(self) -> None:
        if self._error is not None:
            where = self.partial or "<stdout>"
            reason = getattr(self._error, "strerror", None) or self._error
            raise OSError(f"could not write {where}: {reason}") from self._error

    def flush(self) -> None:
        """Wait until every queued row is on disk."""
        self._rows.join()
        self._check()
        self._file.flush()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._rows.put(None)
            self._thread.join()

    # -- ending ----------------------------------------------------------------
    def finish(self) -> Path | None:
        """Close and publish: the partial file becomes the submission, atomically."""
        self._stop()
        self._check()
        self._file.flush()
        if self.path is None:
            return None
        os.fsync(self._file.fileno())
        self.record.unlink(missing_ok=True)
        os.replace(self.partial, self.path)
        self._file.close()  # and with it the lock
        return self.path

    def close(self) -> None:
        """Stop without publishing: rows already queued are written, and the
        partial file stays for a resume (if it holds any row)."""
        self._stop()
        if self.path is None:
            self._file.flush()
        elif not self.done:
            self.discard()
        elif not self._file.closed:
            self._file.flush()
            self._file.close()

    def discard(self) -> None:
        """Stop and leave nothing behind (a run that has no row to publish)."""
        self._stop()
        if self.path is not None and not self._file.closed:
            self.record.unlink(missing_ok=True)
            self.partial.unlink(missing_ok=True)
            self._file.close()


# -- what a run is for -----------------------------------------------------------
def run_record(photos: Iterable[Path], model=None, **options) -> dict:
    """What a submission run is for, compared on a resume: every photo with its
    size and modification time, the model (by content), and `options` such as
    output_size and tta (any JSON values)."""
    stats = {}
    for photo in photos:
        try:
            stat = Path(photo).stat()
            stats[str(Path(photo).absolute())] = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            stats[str(Path(photo).absolute())] = None  # skipped when it is read
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    return {"format": RECORD_FORMAT, "photos": stats, "model": _model_record(model), **options}


def _model_record(model) -> dict:
    """The model by name (for messages) and by content (for the comparison)."""
    from carmask import models
    if model is not None:
        names, label = [model], str(model)
    else:  # the shipped defaults, for sets and for single photos
        names, label = [], "the shipped defaults"
        for views in (MIN_VIEWS, 1):
            try:
                names.append(models.default_for(views))
            except ValueError:
                pass
    digest = hashlib.sha256()
    for name in names:
        digest.update(hashlib.sha256(models.resolve(name).read_bytes()).digest())
    return {"name": label, "sha256": digest.hexdigest()}


def differences(before: dict, now: dict) -> list[str]:
    """What differs between two run records, in words."""
    changes = []
    old, new = before.get("photos") or {}, now.get("photos") or {}
    for paths, what in (([p for p in new if p not in old], "added"),
                        ([p for p in old if p not in new], "removed"),
                        ([p for p in new if p in old and old[p] != new[p]], "changed")):
        if paths:
            shown = ", ".join(Path(p).name for p in paths[:3]) + (f", ... {len(paths) - 3} more"
                                                                  if len(paths) > 3 else "")
            changes.append(f"{len(paths)} photo{'s' if len(paths) > 1 else ''} {what} ({shown})")
    old_model, new_model = before.get("model") or {}, now.get("model") or {}
    if old_model.get("sha256") != new_model.get("sha256"):
        changes.append(f"model was {old_model.get('name')}, now {new_model.get('name')}"
                       if old_model.get("name") != new_model.get("name")
                       else f"model {new_model.get('name')} is not the file it was")
    for key in sorted((before.keys() | now.keys()) - {"photos", "model"}):
        if before.get(key) != now.get(key):
            changes.append(f"{key.replace('_', ' ')} was {_word(key, before.get(key))}, "
                           f"now {_word(key, now.get(key))}")
    return changes


def _word(key: str, value) -> str:
    if key == "output_size":
        return f"{value[0]}x{value[1]}" if value else "each photo's own"
    if isinstance(value, bool):
        return "on" if value else "off"
    return "not recorded" if value is None else str(value)


def read_submission(path) -> dict[str, str]:
    """{img: rle} from a submission CSV (rows of any length)."""
    with open(path, newline="") as f:
        header = f.readline().rstrip("\r\n")
        if header != HEADER.rstrip("\n"):
            raise ValueError(f"{path}: the header must be img,rle_mask, found {header!r}")
        rows = {}
        for line in f:
            if line.strip():
                img, rle = split_row(line)
                rows[img] = rle
        return rows


def _quoted(img: str) -> str:
    """A name as a CSV field: quoted (quotes doubled) when it holds a comma or a quote."""
    return f'"{img.replace(chr(34), chr(34) * 2)}"' if "," in img or '"' in img else img


def split_row(line: str) -> tuple[str, str]:
    """(img, rle) of a CSV row: the RLE holds no comma, so the last comma
    splits them, whatever the name holds (quoted, as `_quoted` writes it)."""
    img, _, rle = line.rstrip("\r\n").rpartition(",")
    if len(img) >= 2 and img[0] == img[-1] == '"':
        img = img[1:-1].replace('""', '"')
    return img, rle.strip('"')

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
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from carmask.files import atomic_write, binary_stdout, sibling, write_all
from carmask.rle import encode_boundaries

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
    them an interrupted run had written. `overwrite`: start afresh, and
    replace `path` at the end; a run begun so may be continued without it.
    """

    def __init__(self, path, overwrite: bool = False, run: dict | None = None, queue_size: int = 256):
        self.run = dict(run or {})
        if str(path) == "-":
            self.path = self.partial = self.record = None
            self.done: set[str] = set()
            self._out = binary_stdout()
            write_all(self._out, HEADER.encode())
        else:
            self.path = Path(path)
            # names that fit wherever the submission's own name fits
            self.partial = sibling(self.path, ".partial")
            self.record = sibling(self.path, ".partial.json")
            # unbuffered: what was written is in the file, or the write failed
            self._out = os.fdopen(self._lock(), "ab", buffering=0)
            try:
                self.done = self._start(overwrite)
            except BaseException:
                self._forget_if_empty()
                self._out.close()
                raise
        self.kept = len(self.done)
        self._rows: queue.Queue = queue.Queue(queue_size)  # bounded: memory stays bounded too
        self._error: Exception | None = None
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
                raise OutputInUse(
                    f"another carmask run is writing {self.path} (it holds {self.partial}); "
                    f"wait for it to finish, or stop it"
                ) from None
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # a run that was finishing moved the file away: lock the new one

    def _start(self, overwrite: bool) -> set[str]:
        """Names already written (a resume), or none after starting afresh."""
        rows = os.fstat(self._out.fileno()).st_size > len(HEADER)  # none: nothing to keep
        recorded = self._recorded() if rows and not overwrite else None
        if rows and not overwrite:
            if recorded is None:
                raise OtherRun(f"{self.partial} does not say which run wrote it; pass --overwrite to start afresh")
            changes = differences(recorded, self.run)
            if changes:
                raise OtherRun(
                    f"{self.partial} is an unfinished run of something else: "
                    f"{'; '.join(changes)}. Run that command again to finish it, "
                    f"or pass --overwrite to start afresh"
                )
        # A run begun with --overwrite was told it may replace the output: its
        # continuation, without --overwrite (which would start afresh), may too.
        replaces = overwrite or bool(recorded and recorded.get("replaces"))
        if self.path.exists() and not replaces:
            raise FileExistsError(f"{self.path} exists; pass --overwrite to replace it")
        if recorded is not None:
            done = self._recover()
            if done is not None:
                return done
        os.ftruncate(self._out.fileno(), 0)
        atomic_write(self.record, lambda tmp: tmp.write_text(json.dumps({**self.run, "replaces": replaces})))
        write_all(self._out, HEADER.encode())
        return set()

    def _forget_if_empty(self) -> None:
        """A start that failed leaves no file without a row behind (it holds the lock)."""
        if os.fstat(self._out.fileno()).st_size <= len(HEADER):
            self.partial.unlink(missing_ok=True)
            self.record.unlink(missing_ok=True)

    def _recorded(self) -> dict | None:
        try:
            return json.loads(self.record.read_text())
        except (OSError, ValueError):
            return None

    def _recover(self) -> set[str] | None:
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
        os.ftruncate(self._out.fileno(), end)
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
        """Rows go out whole, a few at a time: at most the last one is cut short
        when the disk fills up (a resume cuts it off)."""
        pending = bytearray()
        while True:
            row = self._rows.get()
            try:
                if self._error is None:
                    if row is not None:
                        img, rle = row
                        rle = rle if isinstance(rle, str) else encode_boundaries(rle)
                        pending += f"{_quoted(img)},{rle}\n".encode()
                    if row is None or self._rows.empty() or len(pending) > 1 << 20:
                        write_all(self._out, pending)
                        pending.clear()
            except Exception as exc:  # reported to the caller; keep taking rows so that it never blocks
                self._error = exc
            finally:
                self._rows.task_done()
            if row is None:
                return

    def _check(self) -> None:
        """The writer thread's error, naming the file it could not write."""
        error = self._error
        if isinstance(error, OSError):
            raise OSError(
                error.errno, error.strerror or str(error), str(self.partial) if self.partial else None
            ) from error
        if error is not None:
            raise error

    def flush(self) -> None:
        """Wait until every queued row is written."""
        self._rows.join()
        self._check()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._rows.put(None)
            self._thread.join()

    # -- ending ----------------------------------------------------------------
    def finish(self) -> Path | None:
        """Close and publish: the partial file becomes the submission, atomically."""
        self._stop()
        self._check()
        if self.path is None:
            self._out.flush()
            return None
        os.fsync(self._out.fileno())
        os.replace(self.partial, self.path)
        self.record.unlink(missing_ok=True)  # after: a failed publish stays resumable
        self._out.close()  # and with it the lock
        return self.path

    def close(self) -> None:
        """Stop without publishing: rows already queued are written (as far
        as the disk takes them), and the partial file stays for a resume (if
        it holds any row). Never raises for a disk or pipe that failed."""
        self._stop()
        if self.path is None:
            try:
                self._out.flush()
            except OSError:
                pass  # the caller reports the error it met
        elif not self.done:
            self.discard()
        else:
            self._out.close()

    def discard(self) -> None:
        """Stop and leave nothing behind (a run that has no row to publish)."""
        self._stop()
        if self.path is not None and not self._out.closed:
            self.record.unlink(missing_ok=True)
            self.partial.unlink(missing_ok=True)
            self._out.close()


# -- what a run is for -----------------------------------------------------------
def run_record(photos: Iterable[Path], model=None, **options) -> dict:
    """What a submission run is for, compared on a resume: every photo with its
    size and modification time, the model (by content), and `options` such as
    output_size and tta (any JSON values)."""
    stats = {}
    for photo in map(Path, photos):
        # its folder resolved: a resume through a symlinked folder is the same run
        key = os.path.join(os.path.realpath(photo.parent), photo.name)
        try:
            stat = photo.stat()
            stats[key] = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            stats[key] = None  # skipped when it is read
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    model = _model_record(model, options.get("device", "cpu"))
    return {"format": RECORD_FORMAT, "photos": stats, "model": model, **options}


def _model_record(model, device) -> dict:
    """The model by name (for messages) and by content (for the comparison);
    for no model or a tier, the shipped models it picks on `device` for sets
    and for single photos, named."""
    from carmask import models

    if model is not None and str(model) not in models.TIERS:
        names, label = [model], str(model)
    else:
        names = list(dict.fromkeys(models.stands_for(model, device)))
        label = f"{model or 'the shipped defaults'} ({', '.join(names) or 'none shipped'})"
    digest = hashlib.sha256()
    for name in names:
        digest.update(hashlib.sha256(models.resolve(name).read_bytes()).digest())
    return {"name": label, "sha256": digest.hexdigest()}


def refiner_record(refiner, model=None, device="cpu") -> str | None:
    """The edge refiner of a run (`refiner` as `--refiner` gives it, after
    `model` on `device`) by name and content, for the comparison; None for none."""
    from carmask.models import refiner as rf

    chosen = rf.chosen(refiner, model, device)
    if chosen is None:
        return None
    return f"{chosen} (sha256 {hashlib.sha256(rf.resolve(chosen).read_bytes()).hexdigest()[:12]})"


def differences(before: dict, now: dict) -> list[str]:
    """What differs between two run records, in words."""
    changes = []
    old, new = before.get("photos") or {}, now.get("photos") or {}
    for paths, what in (
        ([p for p in new if p not in old], "added"),
        ([p for p in old if p not in new], "removed"),
        ([p for p in new if p in old and old[p] != new[p]], "changed"),
    ):
        if paths:
            shown = ", ".join(Path(p).name for p in paths[:3]) + (
                f", ... {len(paths) - 3} more" if len(paths) > 3 else ""
            )
            changes.append(f"{len(paths)} photo{'s' if len(paths) > 1 else ''} {what} ({shown})")
    old_model, new_model = before.get("model") or {}, now.get("model") or {}
    if old_model.get("sha256") != new_model.get("sha256"):
        changes.append(
            f"model was {old_model.get('name')}, now {new_model.get('name')}"
            if old_model.get("name") != new_model.get("name")
            else f"model {new_model.get('name')} is not the file it was"
        )
    for key in sorted((before.keys() | now.keys()) - {"photos", "model", "replaces"}):
        if before.get(key) != now.get(key):
            changes.append(f"{key.replace('_', ' ')} was {_word(key, before.get(key))}, now {_word(key, now.get(key))}")
    return changes


def _word(key: str, value) -> str:
    if key == "refiner":
        return value or "none"
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

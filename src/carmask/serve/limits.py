"""Admission: how much work the service takes on at once, and the memory it gives back after.

Admission       a few requests at work (`job()`), a fixed number of decoded pixels (`pixels(n)`)
trim_memory     what runs once the server is idle: freed memory back to the system
server_malloc   glibc set for a long-lived server (`carmask serve`)
MULTIPART_SLACK
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

from PIL import Image

from carmask.io import MiB

MULTIPART_SLACK = 64 * 1024  # room for a request's multipart headers and form fields beside its upload
IDLE_SECONDS = 1.0  # after the last job: the answers just made are sent and freed meanwhile


class Admission:
    """At most `jobs` requests at work and `pixels` decoded pixels at once. A
    request waits for a job (`with admission.job():`) before it reads its
    uploads into memory or unpacks a zip, and then (`with admission.pixels(n):`),
    before decoding anything, until its pixels fit. `idle_seconds` after the
    last job ends, `on_idle` runs: by default `trim_memory` (glibc keeps freed
    memory otherwise, and the server would stay at its peak size). `pause`
    waits those seconds: tests give their own, and nothing sleeps."""

    def __init__(
        self,
        jobs: int,
        pixels: int,
        on_idle: Callable[[], None] | None = None,
        idle_seconds: float = IDLE_SECONDS,
        pause: Callable[[float], None] = time.sleep,
    ):
        self.max_jobs, self.max_pixels = jobs, pixels
        self._on_idle, self._idle_seconds, self._pause = on_idle or trim_memory, idle_seconds, pause
        self._busy_jobs = self._busy_pixels = 0
        self._free = threading.Condition()
        self._worked = threading.Event()
        threading.Thread(target=self._trim_when_idle, name="carmask-trim", daemon=True).start()

    @contextmanager
    def job(self):
        with self._free:
            self._free.wait_for(lambda: self._busy_jobs < self.max_jobs)
            self._busy_jobs += 1
        try:
            yield
        finally:
            with self._free:
                self._busy_jobs -= 1
                self._free.notify_all()
            self._worked.set()

    @contextmanager
    def pixels(self, count: int):
        """Inside a job: wait until `count` more decoded pixels fit."""
        count = min(int(count), self.max_pixels)
        with self._free:
            self._free.wait_for(lambda: self._busy_pixels + count <= self.max_pixels)
            self._busy_pixels += count
        try:
            yield
        finally:
            with self._free:
                self._busy_pixels -= count
                self._free.notify_all()

    def _trim_when_idle(self) -> None:
        while self._worked.wait():
            self._pause(self._idle_seconds)
            with self._free:
                if self._busy_jobs:
                    continue
                self._worked.clear()
            self._on_idle()


def trim_memory() -> None:
    gc.collect()  # arrays held by reference cycles (frames of finished requests)
    Image.core.clear_cache()  # the memory blocks Pillow keeps for the next decodes
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def server_malloc(arenas: int = 2, mmap_from: int = 4 * MiB) -> None:
    """glibc's malloc set for a long-lived server: at most `arenas` arenas (as
    MALLOC_ARENA_MAX) and blocks of `mmap_from` bytes or more always mapped
    (returned to the system when freed) rather than carved from an arena,
    where photo-sized buffers would leave the heap fragmented and the process
    at its peak size after a burst of requests."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
        libc.mallopt(-3, mmap_from)  # M_MMAP_THRESHOLD (also stops glibc from raising it)
    except (OSError, AttributeError):
        pass

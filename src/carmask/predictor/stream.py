"""The stream: cars in, predictions out, in order. Photos are decoded ahead
(a batch plus `lookahead` cars, in worker threads), whole cars batched up to
`batch_size` photos, each batch computed on the calling thread and finished
(postprocessed, copied back, read) one batch behind in a thread of its own;
memory holds a batch, the cars being decoded and one batch being finished."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import torch

from carmask.devices import usable_cores
from carmask.inputs.decode import Decoder
from carmask.predictor.compute import Compute, Run
from carmask.predictor.finish import Finish, Output
from carmask.predictor.photos import Car, Prediction, Slot
from carmask.predictor.stages import Stages

FINISHING = "carmask-finish"  # the finishing threads' names begin so


class Stream:
    """Streams cars through `compute` and `finish`; owns the decoding threads
    (`workers`, nvjpeg as `Predictor`'s), made on first use, ended by `close`."""

    def __init__(self, compute: Compute, finish: Finish, stages: Stages, batch_size: int, workers: int, nvjpeg="auto"):
        self.compute, self.finish, self.stages = compute, finish, stages
        self.batch_size, self.workers, self.nvjpeg = batch_size, workers, nvjpeg
        self.device = finish.device
        self._decoder: Decoder | None = None

    @property
    def decoder(self) -> Decoder:
        """The decoding threads (and nvjpeg), made on first use."""
        if self._decoder is None:
            self._decoder = Decoder(self.device, self.workers, nvjpeg=self.nvjpeg, lock=self.finish.lock)
        return self._decoder

    def close(self) -> None:
        """Shut the decoding threads down (after the photos being decoded); new
        ones are made on the next use."""
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None

    def __call__(
        self, cars: Iterable[Car], output: Output, lookahead: int, throughput: bool = False
    ) -> Iterator[Prediction]:
        """Predictions for the cars, in order. `throughput` (a stream of many
        cars on the CPU): torch ops run on one thread each, since the decoding
        workers and the finishing thread already keep every core busy, and
        torch's own threads only wait for one another then."""
        with _single_threaded_torch(throughput and self.device.type == "cpu"):
            yield from self._batches(cars, output, lookahead)

    def _batches(self, cars: Iterable[Car], output: Output, lookahead: int) -> Iterator[Prediction]:
        decoder, pending = self.decoder, deque()
        cars, decoded_before = iter(cars), decoder.seconds

        def fill() -> None:  # a batch's worth of photos plus `lookahead` cars, decoding
            while len(pending) <= lookahead or sum(len(c.sources) for c in pending) < self.batch_size:
                car = next(cars, None)
                if car is None:
                    return
                frame = self.compute.expected_frame(len(car.sources))
                car.futures = [
                    decoder.submit(source, frame, output.full_photos, output.small) for source in car.sources
                ]
                pending.append(car)

        # Postprocessing and reading back run in a thread of their own, one
        # batch behind; inline when profiling, so that the stages do not
        # overlap, and for one car's views (`lookahead` 0), where there is
        # nothing to overlap and a second thread's torch ops only compete with
        # the first's (a refined 1918x1280 cut-out: 0.052 s inline, 0.082 s not).
        # With the learned edge refiner on the CPU, finishing is most of the
        # work: batches are finished on as many threads as there are cores.
        finisher = Finisher(
            lambda batch: self.finish(*batch, output),
            threaded=self.stages.seconds is None and lookahead > 0,
            threads=usable_cores() if self.finish.refiner is not None and self.device.type == "cpu" else 1,
        )
        try:
            fill()
            while pending:
                batch = [pending.popleft()]
                while pending and sum(len(c.sources) for c in batch) + len(pending[0].sources) <= self.batch_size:
                    batch.append(pending.popleft())
                fill()
                finisher.put(self._compute(batch))
                yield from finisher.done()
            yield from finisher.close()
        finally:
            # Stopped early (Ctrl-C, a closed generator): no decoding for cars
            # never to be predicted, and no thread left in torch when Python
            # exits (that aborted the process: "terminate called...").
            for car in pending:
                for future in car.futures:
                    future.cancel()
            finisher.stop()
        # the workers' decoding time (they overlap the rest)
        self.stages.add("decode", decoder.seconds - decoded_before)

    @torch.inference_mode()
    def _compute(self, cars: list[Car]) -> tuple[list[Car], list[Run]]:
        """A model batch's decoded photos to the network's probabilities: the
        cars, and their runs (see `Compute`)."""
        photos = iter(self.decoder.gather([f for car in cars for f in car.futures]))
        for car in cars:
            car.slots, car.futures = [Slot(source, next(photos)) for source in car.sources], []
        return cars, self.compute(cars)


class Finisher:
    """Runs `work` on each batch handed to `put`, in order of the batches, in
    `threads` threads of its own (or inline), at most `threads` batches behind;
    `done` hands out the predictions finished so far, in order."""

    def __init__(self, work: Callable, threaded: bool = True, threads: int = 1):
        self._work, self._threaded, self._threads = work, threaded, max(1, threads)
        self._pending: deque[Future] = deque()  # in the batches' order
        self._finished: deque = deque()
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix=FINISHING) if threaded else None

    def put(self, batch) -> None:
        self._collect()
        if self._pool is None:
            self._finished.append(self._work(batch))
            return
        while len(self._pending) >= self._threads:  # bounded: memory stays bounded
            self._finished.append(self._pending.popleft().result())
        self._pending.append(self._pool.submit(self._work, batch))

    def done(self) -> Iterator[Prediction]:
        self._collect()
        while self._finished:
            yield from self._finished.popleft()

    def close(self) -> Iterator[Prediction]:
        """The rest of the predictions, once every batch is finished."""
        while self._pending:
            self._finished.append(self._pending.popleft().result())
        self._shutdown()
        yield from self.done()

    def stop(self) -> None:
        """End the threads without more work (the caller stopped reading): the
        batches in hand are finished, then the threads are gone."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._shutdown()

    def _collect(self) -> None:
        """Move the batches finished at the head of the line to `_finished`
        (raising a batch's error in order, where it would have come)."""
        while self._pending and self._pending[0].done():
            self._finished.append(self._pending.popleft().result())

    def _shutdown(self) -> None:
        if self._pool is not None:
            # a stream dropped and collected in a finishing thread cannot wait for that thread
            inside = threading.current_thread().name.startswith(FINISHING)
            self._pool.shutdown(wait=not inside)
            self._pool = None


_THREADS_LOCK = threading.Lock()
_THREADS_HELD: list[int] = []  # torch's thread count before the first stream that holds it at 1


@contextmanager
def _single_threaded_torch(active: bool):
    """torch's intra-op threads at 1 while any such stream runs (streams may
    overlap, in threads of their own), then back to what they were."""
    if not active:
        yield
        return
    with _THREADS_LOCK:
        if not _THREADS_HELD:
            _THREADS_HELD.append(torch.get_num_threads())
            torch.set_num_threads(1)
        _THREADS_HELD.append(0)
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_HELD.pop()
            if len(_THREADS_HELD) == 1:
                torch.set_num_threads(_THREADS_HELD.pop())

"""The stream: cars in, predictions out, in order. Photos are decoded ahead
(a batch plus `lookahead` cars, in worker threads), whole cars batched up to
`batch_size` photos, each batch computed on the calling thread and finished
(postprocessed, copied back, read) one batch behind in a thread of its own;
memory holds a batch, the cars being decoded and one batch being finished."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch

from carmask.inputs.decode import Decoder
from carmask.predictor.compute import Compute, Run
from carmask.predictor.finish import Finish, Output
from carmask.predictor.photos import Car, Prediction, Slot
from carmask.predictor.stages import Stages


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
                car.futures = [decoder.submit(source, frame, output.full_photos) for source in car.sources]
                pending.append(car)

        # Postprocessing and reading back run in a thread of their own, one
        # batch behind; inline when profiling, so that the stages do not
        # overlap, and for one car's views (`lookahead` 0), where there is
        # nothing to overlap and a second thread's torch ops only compete with
        # the first's (a refined 1918x1280 cut-out: 0.052 s inline, 0.082 s not).
        finisher = Finisher(
            lambda batch: self.finish(*batch, output), threaded=self.stages.seconds is None and lookahead > 0
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
    """Runs `work` on each batch handed to `put`, in order, in a thread of its
    own (or inline), one batch behind at most; `done` hands out the
    predictions finished so far."""

    def __init__(self, work: Callable, threaded: bool = True):
        self._work, self._threaded = work, threaded
        self._todo: queue.Queue = queue.Queue(maxsize=1)  # bounded: memory stays bounded
        self._finished: deque = deque()
        self._error: BaseException | None = None
        self._stopped = False
        if threaded:
            self._thread = threading.Thread(target=self._run, name="carmask-finish", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while (batch := self._todo.get()) is not None:
            if self._error is None and not self._stopped:
                try:
                    self._finished.append(self._work(batch))
                except BaseException as exc:  # handed to the caller by done()/close()
                    self._error = exc

    def put(self, batch) -> None:
        self._check()
        if self._threaded:
            self._todo.put(batch)
        else:
            self._finished.append(self._work(batch))

    def done(self) -> Iterator[Prediction]:
        self._check()
        while self._finished:
            yield from self._finished.popleft()

    def close(self) -> Iterator[Prediction]:
        """The rest of the predictions, once every batch is finished."""
        if self._threaded:
            self._todo.put(None)
            self._thread.join()
            self._threaded = False
        yield from self.done()

    def stop(self) -> None:
        """End the thread without more work (the caller stopped reading): the
        batch in hand is finished, then the thread is gone."""
        self._stopped = True
        if self._threaded:
            self._todo.put(None)
            self._thread.join()
            self._threaded = False

    def _check(self) -> None:
        if self._error is not None:
            raise self._error


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

"""The finishing threads of a prediction stream: batches finished side by side come out in order."""

import random
import threading
import time

import pytest

from carmask.predictor.stream import Finisher


def slow_square(batch):
    time.sleep(random.random() / 50)  # the batches finish out of order
    return [batch * batch]


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_batches_come_out_in_order(threads):
    finisher, out = Finisher(slow_square, threads=threads), []
    for batch in range(40):
        finisher.put(batch)
        out += list(finisher.done())
    out += list(finisher.close())
    assert out == [b * b for b in range(40)]


def test_at_most_threads_batches_are_in_hand():
    running, most, lock = [0], [0], threading.Lock()

    def work(batch):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return [batch]

    finisher = Finisher(work, threads=3)
    for batch in range(20):
        finisher.put(batch)
        assert len(finisher._pending) <= 3
    assert list(finisher.close()) == list(range(20))
    assert most[0] <= 3


def test_an_error_comes_where_its_batch_would_have():
    def work(batch):
        if batch == 5:
            raise ValueError("batch 5")
        time.sleep(0.002)
        return [batch]

    finisher, out = Finisher(work, threads=2), []
    with pytest.raises(ValueError, match="batch 5"):
        for batch in range(20):
            finisher.put(batch)
            out += list(finisher.done())
        out += list(finisher.close())
    finisher.stop()
    assert out == list(range(len(out))) and len(out) <= 5


def test_stop_finishes_what_is_in_hand_and_ends_the_threads():
    before = set(threading.enumerate())
    finisher = Finisher(slow_square, threads=2)
    for batch in range(3):
        finisher.put(batch)
    assert set(threading.enumerate()) - before  # its threads (others may run beside the test)
    finisher.stop()
    assert not set(threading.enumerate()) - before


def test_inline():
    finisher = Finisher(slow_square, threaded=False, threads=2)
    finisher.put(3)
    assert list(finisher.done()) == [9]
    assert list(finisher.close()) == []

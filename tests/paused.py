"""`python paused.py MARKER AFTER carmask-args...`: carmask, paused after its
AFTER-th output (a submission row handed to the writer, or a cut-out saved)
until a signal arrives (or MARKER.go appears: then it goes on); MARKER is
created when it pauses. Tests send it a real signal there, so that it stops
at a known point (`helpers.signalled_run`).

With CARMASK_TEST_BUSY set, the finishing thread is kept in torch work while
the signal arrives (the thread that aborted the process when left behind).
"""

import itertools
import os
import sys
import time
from pathlib import Path

import carmask.cli.cutout
import carmask.predictor.finish
import carmask.submission
from carmask.cli import main

marker, after, args = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
count = itertools.count(1)


def pausing(function):
    def paused(*a, **k):
        result = function(*a, **k)
        if next(count) == after:
            marker.touch()
            while not marker.with_suffix(".go").exists():
                time.sleep(0.02)  # the signal's handler raises here
        return result

    return paused


if args[0] == "predict":
    carmask.submission.SubmissionWriter.write = pausing(carmask.submission.SubmissionWriter.write)
else:
    carmask.cli.cutout._save = pausing(carmask.cli.cutout._save)
    carmask.cli.cutout._write_stdout = pausing(carmask.cli.cutout._write_stdout)

if os.environ.get("CARMASK_TEST_BUSY"):
    import torch

    edges, calls = carmask.predictor.finish.edges, itertools.count(1)

    def busy_edges(batch):
        if next(calls) > 1:  # the first batch goes out; the next keeps the thread in torch
            x = torch.rand(256, 256)
            for _ in range(400):
                x = (x @ x).softmax(dim=1)
        return edges(batch)

    carmask.predictor.finish.edges = busy_edges

main(args, prog_name="carmask")

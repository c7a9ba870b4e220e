"""The one loop of the verbs that predict (predict, cutout, evaluate).

    run = Run("predicting")
    run.over(outcomes, total, each)   # a bar; each note said once per car, each
                                      # skip at once; `each` does the verb's own
                                      # work with every other outcome
    ...                               # the verb says what it made ("wrote ...")
    run.end(nothing=...)              # cars noted, skips by kind; exit 1 when
                                      # some were skipped or nothing was made

The verb keeps only what is its own: what it writes (a row, a cut-out, a
score) and the line that says so. An outcome is anything with `.path`,
`.error` (an ImageError, or None) and `.note` (a Note, or None): a
`Prediction` or a `Cutout`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable

from carmask.cli.common import detail, fail, progress, warn
from carmask.cli.outcomes import PredictionNotes, Skips


class Run:
    """One pass of a verb over its outcomes: the progress bar, the notes (said
    once per car, counted by car), the skips (said at once, counted by kind;
    `skips.add` for those the verb finds itself), the speed (-v), the summary
    and the exit status."""

    def __init__(self, doing: str):
        self.doing = doing  # the progress bar's label: "predicting"
        self.notes, self.skips = PredictionNotes(), Skips()
        self.seconds = 0.0

    def over(self, outcomes: Iterable, total: int, each: Callable[[object], None]) -> None:
        """Every outcome (`total` of them, for the bar): its note said, a skip
        said and counted, any other handed to `each`. Then the speed (-v)."""
        start, outcomes = time.perf_counter(), iter(outcomes)
        try:
            with progress(total, self.doing) as bar:
                for outcome in outcomes:
                    bar.update()
                    self.notes.add(outcome)
                    if outcome.error:
                        self.skips.add(outcome.error)
                    else:
                        each(outcome)
        finally:
            # stopped early (a full disk, Ctrl-C): the stream's threads end now,
            # not whenever its generator is collected
            getattr(outcomes, "close", lambda: None)()
        self.seconds = time.perf_counter() - start
        detail(
            f"{total} photo{'s' * (total != 1)} in {self.seconds:.1f} s "
            f"({total / max(self.seconds, 1e-9):.1f} photos/s)"
        )

    def summary(self, *warnings: str | None, nothing: str | None = None) -> int:
        """The cars noted (by treatment), `warnings` of the verb's own (None:
        none), the skips by kind and `nothing` (the sentence when nothing was
        made); the exit status: 1 when some input was skipped or nothing was
        made, else 0."""
        self.notes.summary()
        for warning in warnings:
            if warning:
                warn(warning)
        self.skips.summary()
        if nothing:
            fail(nothing)
        return 1 if self.skips or nothing else 0

    def end(self, *warnings: str | None, nothing: str | None = None) -> None:
        """`summary`, then exit 1 when some input was skipped or nothing was made."""
        status = self.summary(*warnings, nothing=nothing)
        if status:
            sys.exit(status)

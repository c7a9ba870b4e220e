"""The one loop of the verbs that predict (cli/loop.py), without a model; and
help texts that follow the constants they describe."""

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import run_cli

from carmask.outcomes import ImageError, Note, NoteKind, Problem, Treatment


@dataclass
class Outcome:  # what the loop reads of a Prediction or a Cutout
    path: Path
    error: ImageError | None = None
    note: Note | None = None


def run_over(outcomes, **end):
    """Run.over then Run.end on `outcomes`: what `each` got, the exit status, stderr."""
    import click

    from carmask.cli.loop import Run

    stderr, handed = io.StringIO(), []
    with pytest.MonkeyPatch.context() as patch, click.Context(click.Command("test")):
        patch.setattr(sys, "stderr", stderr)
        run = Run("testing")
        run.over(outcomes, len(outcomes), handed.append)
        try:
            run.end(**end)
            status = 0
        except SystemExit as exc:
            status = exc.code
    return handed, status, stderr.getvalue()


def test_only_usable_outcomes_reach_the_verb_and_a_skip_exits_1():
    bad = ImageError("a/x_01.jpg", "empty file", Problem.EMPTY)
    good = [Outcome(Path("a/x_02.jpg")), Outcome(Path("a/x_03.jpg"))]
    handed, status, said = run_over([good[0], Outcome(Path("a/x_01.jpg"), error=bad), good[1]])
    assert handed == good and status == 1
    assert said.splitlines() == ["carmask: skipped a/x_01.jpg: empty file", "carmask: 1 photo(s) skipped: 1 empty file"]


def test_a_cars_note_is_said_once_and_counted_once():
    note = Note(NoteKind.NOT_ONE_STUDIO, ("c_01.jpg", "c_02.jpg"), Treatment.PHOTO_BY_PHOTO, car="c", share=0.6)
    handed, status, said = run_over([Outcome(Path(f"c_0{i}.jpg"), note=note) for i in (1, 2)])
    assert len(handed) == 2 and status == 0
    assert said.splitlines() == [
        f"carmask: warning: {note}",
        "carmask: warning: 1 car with views predicted photo by photo: c",
    ]


def test_nothing_made_is_said_and_exits_1():
    handed, status, said = run_over([], nothing="no photo could be predicted: nothing written")
    assert (handed, status) == ([], 1)
    assert said == "carmask: no photo could be predicted: nothing written\n"


def test_the_sets_help_follows_the_constants():
    from carmask.inputs.spec import MIN_VIEWS, SETS, STUDIO_DIFFERING, STUDIO_SAME

    text = " ".join(run_cli("predict", "--help").output.split())
    assert f"--sets [{'|'.join(SETS)}]" in text
    assert (
        f"at least {MIN_VIEWS} readable views of one size, each differing from their median background over "
        f"at most {STUDIO_DIFFERING:.0%} of the frame (the car and its shadow) and at least "
        f"{STUDIO_SAME:.0%}"
    ) in text


def test_the_train_help_names_every_recipe_and_run_file():
    from carmask.cli.train import RUN_FILES
    from carmask.recipes import RECIPES

    text = "".join(run_cli("train", "--help").output.split())  # wrapped at spaces and hyphens
    assert ",".join(RECIPES) in text and ",".join(RUN_FILES) in text

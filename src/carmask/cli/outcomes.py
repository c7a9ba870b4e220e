"""What the verbs say of outcomes (carmask.outcomes): the sentences are made
here, at the edge, from the values; nothing reads a sentence back.

    Skips          a photo skipped, said at once (`skipped`) and counted by kind
                   at the end (`summary`: '3 photo(s) skipped: 2 not a readable
                   image, 1 empty file'); its ImageError is the value
    PredictionNotes  each prediction's `Note` said once per car, and counted by
                   car for the summary, grouped by its `Treatment` ('3 cars with
                   views predicted photo by photo: a, b, c')
    some           'a, b, c, d, e, ... 3 more'
"""

from __future__ import annotations

from pathlib import Path

from carmask.cli.common import fail, warn
from carmask.outcomes import ImageError, Note, Treatment, count


def some(names, shown: int = 5) -> str:
    """'a, b, c, d, e, ... 3 more'."""
    names = list(names)
    return ", ".join(names[:shown]) + (f", ... {len(names) - shown} more" if len(names) > shown else "")


def skipped_summary(errors: list[ImageError], what: str = "photo") -> str:
    """'3 photo(s) skipped: 2 not a readable image, 1 ...': the skips counted by kind."""
    return f"{len(errors)} {what}(s) skipped: " + ", ".join(f"{n} {kind.value}" for kind, n in count(errors).items())


class Skips(list):
    """The photos skipped (ImageErrors), each said when it is added (`said`:
    the sentence, when it is not the error's own), counted by kind at the end."""

    def add(self, error: ImageError, said: str | None = None) -> None:
        self.append(error)
        fail(f"skipped {said or error}")

    def summary(self, what: str = "photo") -> None:
        if self:
            fail(skipped_summary(self, what))


class PredictionNotes:
    """Each prediction's (or cut-out's) `note` said once per car (the predictor
    puts the same note on every photo it concerns), and counted by car for the
    summary, grouped by how the photos were predicted (its `Treatment`)."""

    def __init__(self):
        self._said: set[tuple] = set()
        self.cars: dict[Treatment, dict[tuple, str]] = {}  # treatment -> {car: its name}

    def add(self, prediction) -> None:
        note: Note | None = prediction.note
        if note is None:
            return
        from carmask.kaggle import parse_view_name

        path = Path(prediction.path)
        car = (path.parent, (parse_view_name(path) or (path.name,))[0])
        if (car, note) not in self._said:
            self._said.add((car, note))
            warn(str(note))
        self.cars.setdefault(note.treatment, {})[car] = car[1]

    def summary(self) -> None:
        """'3 cars with views predicted photo by photo: a, b, c' for each treatment."""
        for treatment, cars in self.cars.items():
            warn(f"{len(cars)} car{'s' if len(cars) > 1 else ''} with views {treatment.value}: {some(cars.values())}")

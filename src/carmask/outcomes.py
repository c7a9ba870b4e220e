"""Outcomes as values: why a photo was skipped (`ImageError`, its `Problem`)
and how the views of a car were predicted when not as their names suggest
(`Note`, its `NoteKind` and `Treatment`), each with the photos it concerns.

The sentences are written here, once (`str()`), and made only where people
read them: the CLI, the HTTP service, the Python API's warnings. Summaries
count kinds, HTTP statuses and remove.bg's codes follow kinds, and nothing
reads a sentence back. `as_dict`/`from_dict` carry outcomes as JSON (the Ray
engine's rows, the service's manifest).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from carmask.inputs.spec import MIN_VIEWS, NotEnoughViews


class Problem(Enum):
    """Why a photo (or its mask) was skipped; the value is how a summary counts it."""

    MISSING = "no such file"
    EMPTY = "empty file"
    NOT_A_FILE = "not a regular file"
    FOLDER = "is a folder"
    UNREADABLE = "not a readable image"
    CORRUPT = "corrupt or truncated"
    TOO_LARGE = "too many pixels"
    NOT_A_PHOTO = "not a photo"  # an array or an upload of no photo's shape or type
    BAD_MASK = "not a usable mask"
    TOO_FEW_VIEWS = "too few views"  # the model compares each photo with its car's other views
    NOT_PREDICTED = "not predicted"  # the model could not be used for it
    NAME_NOT_TEXT = "name not UTF-8 text"  # a submission row cannot hold the name
    NAME_LINE_BREAK = "name holds a line break"
    NOT_WRITTEN = "not written"  # its output could not be written


class ImageError(ValueError):
    """A photo or mask that cannot be used: `path` names it, `kind` says why
    (a `Problem`), `reason` in words. Equal when they say the same of the same photo."""

    def __init__(self, path, reason: str, kind: Problem = Problem.UNREADABLE):
        self.path, self.reason, self.kind = str(path), reason, kind
        super().__init__(f"{path}: {reason}")

    def __eq__(self, other) -> bool:
        return isinstance(other, ImageError) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash((self.path, self.reason, self.kind))

    def __reduce__(self):  # pickled whole (Ray, process pools), not as its message alone
        return ImageError, (self.path, self.reason, self.kind)

    def as_dict(self) -> dict:
        return {"photo": self.path, "kind": self.kind.name, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: dict) -> ImageError:
        return cls(data["photo"], data["reason"], Problem[data["kind"]])


def skip(path, error: Exception) -> ImageError:
    """`error` as the skip of the photo `path`: an ImageError as it is; one of
    another type as an ImageError of its kind (NotEnoughViews: TOO_FEW_VIEWS,
    else NOT_PREDICTED), saying what it says, with `error` as its cause."""
    if isinstance(error, ImageError):
        return error
    kind = Problem.TOO_FEW_VIEWS if isinstance(error, NotEnoughViews) else Problem.NOT_PREDICTED
    skipped = ImageError(path, str(error), kind)
    skipped.__cause__ = error
    return skipped


def count(skips) -> dict[Problem, int]:
    """How many of `skips` (ImageErrors) there are of each kind, the most first
    (then by the kind's words): what a summary says."""
    counts: dict[Problem, int] = {}
    for error in skips:
        counts[error.kind] = counts.get(error.kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0].value)))


class NoteKind(Enum):
    """Why the views of a car were not predicted as one set."""

    OTHER_SIZE = "not the size of the other views"
    TOO_FEW_VIEWS = "too few readable views for a background"
    NOT_ONE_STUDIO = "views that do not share one studio"
    ONE_PHOTO = "views that are (nearly) one photo"


class Treatment(Enum):
    """How the photos a note concerns were predicted; the value is how a summary says it."""

    ALONE = "predicted alone"
    PHOTO_BY_PHOTO = "predicted photo by photo"
    SINGLE_PHOTO_MODEL = "predicted photo by photo with the single-photo model"
    AS_A_SET = "predicted as a set all the same (the model needs one)"


@dataclass(frozen=True)
class Note:
    """How some views of a car were predicted, and why: the same note on every
    photo it concerns (`photos`, by name). `car`: the car's name, None for
    views without one (uploads). `size`: for OTHER_SIZE, the other views'
    (width, height); `views`: for TOO_FEW_VIEWS, the readable views; `share`:
    for NOT_ONE_STUDIO the largest share of the frame where a view differs
    from their median background, for ONE_PHOTO the smallest."""

    kind: NoteKind
    photos: tuple[str, ...]
    treatment: Treatment
    car: str | None = None
    size: tuple[int, int] | None = None
    views: int = 0
    share: float = 0.0

    def __str__(self) -> str:
        return f"{', '.join(self.photos)}: {self._why()}: {self.treatment.value}"

    def _why(self) -> str:
        if self.kind is NoteKind.OTHER_SIZE:
            of_car = f" of car {self.car}" if self.car else ""
            return f"not the size of the other views{of_car} ({self.size[0]}x{self.size[1]})"
        if self.kind is NoteKind.TOO_FEW_VIEWS:
            has = f"car {self.car} has" if self.car else "only"
            return f"{has} {self.views} readable view{'s' * (self.views != 1)}, and a background needs {MIN_VIEWS}"
        if self.kind is NoteKind.NOT_ONE_STUDIO:
            return (
                f"do not share one studio (a photo differs from their median background over "
                f"{self.share:.0%} of the frame)"
            )
        return (
            f"are (nearly) one photo (one differs from their median background over only "
            f"{self.share:.1%} of the frame: the median shows the car, not the studio)"
        )

    def as_dict(self) -> dict:
        return {
            "kind": self.kind.name,
            "photos": list(self.photos),
            "treatment": self.treatment.name,
            "car": self.car,
            "size": list(self.size) if self.size else None,
            "views": self.views,
            "share": self.share,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Note:
        return cls(
            NoteKind[data["kind"]],
            tuple(data["photos"]),
            Treatment[data["treatment"]],
            data["car"],
            tuple(data["size"]) if data["size"] else None,
            data["views"],
            data["share"],
        )

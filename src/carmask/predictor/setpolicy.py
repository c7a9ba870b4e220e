"""The set policy: which of a car's photos are predicted together as a set,
and why not (a `Note` for the photos it concerns). Pure functions of names,
sizes and measured shares: no model, no tensors, no photos. The set modes
and the studio thresholds it applies (`SETS`, `STUDIO_DIFFERING`,
`STUDIO_SAME`) are defined beside `MIN_VIEWS` in `inputs.spec`, where the
CLI's help reads them too."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from carmask.inputs.spec import MIN_VIEWS, STUDIO_DIFFERING, STUDIO_SAME
from carmask.outcomes import Note, NoteKind, Treatment


@dataclass(frozen=True)
class Group:
    """Photos predicted together, as indices into the photos given: a set (its
    studio still to be checked when `check`), or one photo; `note`: why they
    were not predicted as their names suggest, on every photo it concerns."""

    photos: tuple[int, ...]
    note: Note | None = None
    check: bool = False


def group(
    names: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    car: str | None,
    sets: str,
    compares_views: Callable[[int], bool],
    defaults: bool,
) -> list[Group]:
    """A car's readable photos (their file names and (width, height) sizes, in
    order) as groups: a set first, then the photos predicted alone. `car`: the
    car's name (None: uploads, which come without one); `sets` as
    `Predictor`'s; `compares_views(n)`: whether the model for a car of `n`
    views compares each photo with its views (asked only when it matters);
    `defaults`: each photo gets a shipped model for its case (else the named
    model says what it needs)."""
    alone = [Group((i,)) for i in range(len(names))]
    if len(names) < (1 if car else 2) or sets == "never":  # a named car's one view: said
        return alone
    if not compares_views(max(len(names), MIN_VIEWS)):
        return alone  # a photo-only model: each alone
    members, odd = list(range(len(names))), []
    if sets == "auto" and len(set(sizes)) > 1:
        common = max(set(sizes), key=list(sizes).count)
        odd = [i for i in members if sizes[i] != common]
        members = [i for i in members if sizes[i] == common]
        note = Note(NoteKind.OTHER_SIZE, _names(names, odd), Treatment.ALONE, car, common)
        odd = [Group((i,), note) for i in odd]
    if len(members) >= MIN_VIEWS:
        return [Group(tuple(members), check=sets == "auto")] + odd
    if defaults:  # a default model for each case
        note = Note(
            NoteKind.TOO_FEW_VIEWS, _names(names, members), Treatment.SINGLE_PHOTO_MODEL, car, views=len(members)
        )
        return [Group((i,), note) for i in members] + odd
    return [Group((i,)) for i in members] + odd  # the named model says what it needs


def studio(names: Sequence[str], shares: Sequence[float], car: str | None, alone: bool) -> Note | None:
    """Whether a set's photos share one studio: None if they do, else the note
    that says why not. `shares[i]`: the share of the frame where photo i
    differs from the set's median background; `alone`: the photos can be
    predicted photo by photo (else the set is kept all the same: the model
    needs one)."""
    if STUDIO_SAME <= min(shares) and max(shares) <= STUDIO_DIFFERING:
        return None
    apart = max(shares) > STUDIO_DIFFERING
    return Note(
        NoteKind.NOT_ONE_STUDIO if apart else NoteKind.ONE_PHOTO,
        tuple(names),
        Treatment.PHOTO_BY_PHOTO if alone else Treatment.AS_A_SET,
        car=car,
        share=float(max(shares) if apart else min(shares)),
    )


def _names(names: Sequence[str], members: Sequence[int]) -> tuple[str, ...]:
    return tuple(names[i] for i in members)

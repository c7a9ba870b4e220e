"""A model batch's decoded photos to the network's probabilities: each car's
photos grouped into sets or single photos and the sets' studio checked (as
`setpolicy` decides), the model inputs (frames, each set's background, crop
boxes), the runner's call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from carmask.inputs.build import Inputs, model_inputs
from carmask.inputs.resize import frames
from carmask.inputs.spec import MIN_VIEWS, NotEnoughViews
from carmask.outcomes import Note
from carmask.predictor.photos import Car, Slot
from carmask.predictor.runner import Runner, Segmenter
from carmask.predictor.setpolicy import group, studio
from carmask.predictor.stages import Stages


@dataclass
class Unit:
    """Photos predicted together by one model: a car's set, or one photo."""

    slots: list[Slot]
    note: Note | None = None
    check: bool = False  # test that the set shares one studio
    car: str | None = None  # its car's name (None: uploads)


@dataclass
class Run:
    """One model's share of a batch: its photos, their inputs, and the
    network's N x h x w probabilities (crops at the network's size, each in
    its box of the frame `model.spec.frame`)."""

    model: Segmenter
    slots: list[Slot]
    inputs: Inputs
    probs: torch.Tensor


class Compute:
    """Decoded cars to runs, with the `runner`'s models; `sets` as `Predictor`'s."""

    def __init__(self, runner: Runner, sets: str, stages: Stages):
        self.runner, self.sets, self.stages = runner, sets, stages

    def expected_frame(self, views: int) -> tuple[int, int] | None:
        """The frame the photos of a car of `views` views will most likely need."""
        as_set = views >= MIN_VIEWS and self.sets != "never"
        try:
            return self.runner.model_for(views if as_set else 1).spec.frame
        except (NotEnoughViews, ValueError):  # no such model: said where it is needed
            return None

    @torch.inference_mode()
    def __call__(self, cars: list[Car]) -> list[Run]:
        """The cars of a model batch (their slots decoded) to the network's
        probabilities, model by model."""
        with self.stages("inputs"):
            runs = self._inputs([unit for car in cars for unit in self._group(car)])
        out = []
        for model, units, inputs in runs:
            with self.stages("model"):
                probs = self.runner.probabilities(model, inputs.x)
            out.append(Run(model, [slot for unit in units for slot in unit.slots], inputs, probs))
        return out

    def frames(self, slots: list[Slot], size: tuple[int, int]) -> torch.Tensor:
        """The slots' photos at the frame `size`: made by the decoding workers, or here."""
        return frames(
            [
                s.frame
                if s.frame is not None and s.frame.shape[-1] == size[0] and s.frame.shape[-2] == size[1]
                else s.small
                if s.small is not None  # the refiner's copy: the workers made the frame from it
                else s.full_photo(self.runner.device)
                for s in slots
            ],
            size,
        )

    def _group(self, car: Car) -> list[Unit]:
        """A car's readable photos as units predicted together: its set, or
        single photos (with a note where the set was not used), as the set
        policy groups them."""
        readable = [slot for slot in car.slots if slot.error is None]
        groups = group(
            _names(readable),
            [slot.size for slot in readable],
            car.name,
            self.sets,
            lambda views: self.runner.model_for(views).spec.needs_views,
            self.runner.defaults,
        )
        return [Unit([readable[i] for i in g.photos], g.note, g.check, car.name) for g in groups]

    def _inputs(self, units: list[Unit]) -> list[tuple[Segmenter, list[Unit], Inputs]]:
        """Model inputs for the units, by model: sets first, then single photos
        (with the photos of sets that turn out not to share a studio)."""
        sets, singles = [u for u in units if len(u.slots) > 1], [u for u in units if len(u.slots) == 1]
        runs = []
        if sets:
            run, apart = self._sets(sets)
            runs += [run] if run else []
            singles += apart
        if singles:
            runs += self._singles(singles)
        return runs

    def _sets(self, sets: list[Unit]) -> tuple[tuple[Segmenter, list[Unit], Inputs] | None, list[Unit]]:
        """The sets' inputs with the multi-view model, for those kept as sets;
        and the photos of sets that do not share a studio, as single photos."""
        model = self.runner.model_for(MIN_VIEWS)
        alone = not self.runner.model_for(1).spec.needs_views  # else a failed check keeps the set
        inputs = model_inputs(
            self.frames([s for u in sets for s in u.slots], model.spec.frame), [len(u.slots) for u in sets], model.spec
        )
        kept, singles, rows, start = [], [], [], 0
        for unit in sets:
            shares = inputs.differing[start : start + len(unit.slots)]
            note = studio(_names(unit.slots), shares, unit.car, alone) if unit.check else None
            if note is not None and alone:
                singles += [Unit([slot], note) for slot in unit.slots]
            else:
                for slot in unit.slots:
                    slot.note, slot.views = note, unit.slots
                kept.append(unit)
                rows += range(start, start + len(unit.slots))
            start += len(unit.slots)
        if not kept:
            return None, singles
        if len(rows) < len(inputs.boxes):  # some sets left for single photos
            index = torch.tensor(rows, device=inputs.x.device)
            inputs = Inputs(inputs.x[index], [inputs.boxes[r] for r in rows], None)
        return (model, kept, inputs), singles

    def _singles(self, singles: list[Unit]) -> list[tuple[Segmenter, list[Unit], Inputs]]:
        """Single photos' inputs with the single-photo model; none if that model needs a set."""
        model = self.runner.model_for(1)
        if model.spec.needs_views:
            error = NotEnoughViews(
                f"this model compares each photo with its car's other views: "
                f"it needs a set of at least {MIN_VIEWS} views"
            )
            for unit in singles:
                unit.slots[0].fail(error, unit.note)
            return []
        for unit in singles:
            unit.slots[0].note = unit.note
        photos = self.frames([u.slots[0] for u in singles], model.spec.frame)
        return [(model, singles, model_inputs(photos, [1] * len(singles), model.spec))]


def _names(slots: Sequence[Slot]) -> tuple[str, ...]:
    return tuple(slot.path.name for slot in slots)

"""Scoring: mean per-image dice on a Kaggle-layout dataset, and the resize loss."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from carmask.inputs.resize import resize_map
from carmask.io import ImageError, find_photos, read_mask
from carmask.kaggle import PhotoSet, group_by_car, mask_path, masks_dir_for, photos_dir_for
from carmask.metrics import dice
from carmask.predict import Prediction, Predictor


@dataclass
class Scores:
    dice: dict[str, float] = field(default_factory=dict)  # photo name -> dice
    skipped: list[ImageError] = field(default_factory=list)  # the photos skipped, each with its kind
    worst: list[tuple[float, Path, Path, np.ndarray]] = field(default_factory=list)
    unscored: int = 0  # views without a mask: they only served their car's background

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.dice.values()))) if self.dice else float("nan")

    def add(self, prediction: Prediction, masks_dir: Path, keep_worst: int = 8) -> ImageError | None:
        """Score one prediction against its mask in `masks_dir` (a view without
        one is only counted, `unscored`); a skip (the prediction's error, or a
        mask that cannot be read) is kept in `skipped` and returned."""
        if prediction.error:
            self.skipped.append(prediction.error)
            return prediction.error
        truth_path = mask_path(prediction.path, masks_dir)
        if not truth_path.exists():
            self.unscored += 1  # a view without a mask: it only served the background
            return None
        try:
            height, width = prediction.probs.shape
            truth = read_mask(truth_path, expected_size=(width, height))
        except ImageError as exc:
            self.skipped.append(exc)
            return exc
        score = dice(prediction.mask, truth)
        self.dice[prediction.path.name] = score
        self.worst = sorted(
            self.worst + [(score, prediction.path, truth_path, _small(prediction.probs))], key=lambda t: t[0]
        )[:keep_worst]
        return None


def scored_sets(data_dir, masks_dir=None, cars: Iterable[str] | None = None) -> tuple[list[PhotoSet], Path]:
    """The car sets of a dataset that have at least one mask (whole sets: the
    background needs every view, even those without a mask)."""
    photos_dir = photos_dir_for(data_dir)
    masks_dir = Path(masks_dir) if masks_dir else masks_dir_for(photos_dir)
    if not masks_dir.is_dir():
        raise FileNotFoundError(f"no masks folder {masks_dir}")
    wanted = set(cars) if cars is not None else None
    sets = [
        s
        for s in group_by_car(find_photos([photos_dir]))
        if (wanted is None or s.car in wanted) and any(mask_path(p, masks_dir).exists() for p in s.paths)
    ]
    return sets, masks_dir


def read_cars(path) -> list[str]:
    """Car ids from a file: the held-out ("val") cars of a `split.json` that
    `carmask train` writes, a JSON list, or text with one id a line."""
    text = Path(path).read_text()
    try:
        cars = json.loads(text) if text.lstrip().startswith(("[", "{")) else text.split()
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(cars, dict):
        if not isinstance(cars.get("val"), list):
            raise ValueError(f'{path}: no "val" list (the held-out cars of a training run\'s split.json)')
        cars = cars["val"]
    if not isinstance(cars, list) or not all(isinstance(c, str) for c in cars):
        raise ValueError(f"{path}: expected a list of car ids")
    if not cars:
        raise ValueError(f"{path}: lists no car")
    return cars


def evaluate(
    predictor: Predictor, data_dir, masks_dir=None, output_size=None, cars=None, keep_worst: int = 8
) -> Scores:
    """Predict every photo of the scored sets and compare with its mask
    (`carmask evaluate` runs `Scores.add` in the CLI's loop instead)."""
    sets, masks_dir = scored_sets(data_dir, masks_dir, cars)
    scores = Scores()
    for prediction in predictor.predict_sets(sets, output_size=output_size):
        scores.add(prediction, masks_dir, keep_worst)
    return scores


def _small(probs: np.ndarray, width: int = 480) -> np.ndarray:
    """A light copy of probabilities for the gallery (full-size ones are 10 MB)."""
    height = max(1, round(probs.shape[0] * width / probs.shape[1]))
    return resize_map(torch.from_numpy(probs)[None, None], (width, height))[0, 0].numpy()


def resize_loss(masks: Iterable[Path], size: tuple[int, int]) -> dict:
    """Mean dice of true masks after a trip down to `size` and back: resizing
    the soft mask (bilinear, then threshold) against resizing the hard mask
    (nearest, as the seed did). Unreadable masks are left out: their
    `ImageError`s in `skipped`."""
    soft, hard, skipped = [], [], []
    for path in masks:
        try:
            truth = read_mask(path)
        except ImageError as exc:
            skipped.append(exc)
            continue
        height, width = truth.shape
        t = torch.from_numpy(truth.astype(np.float32))[None, None]
        down = resize_map(t, size)
        soft.append(dice(resize_map(down, (width, height))[0, 0].numpy() > 0.5, truth))
        hard_down = torch.nn.functional.interpolate(t, size=(size[1], size[0]), mode="nearest")
        hard_up = torch.nn.functional.interpolate(hard_down, size=(height, width), mode="nearest")
        hard.append(dice(hard_up[0, 0].numpy() > 0.5, truth))
    return {
        "soft": float(np.mean(soft)) if soft else float("nan"),
        "hard": float(np.mean(hard)) if hard else float("nan"),
        "masks": len(soft),
        "skipped": skipped,
    }

"""The Kaggle Carvana layout: view names (`<car>_<NN>.jpg`), photos grouped by
car, the masks beside the photos (`train/` and `train_masks/`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_VIEW_NAME = re.compile(r"^(?P<car>.+)_(?P<view>\d{2})$")


def parse_view_name(path) -> tuple[str, int] | None:
    """(car id, view number) for a name like `<car>_<NN>.jpg`, else None."""
    match = _VIEW_NAME.match(Path(path).stem)
    return (match["car"], int(match["view"])) if match else None


@dataclass
class PhotoSet:
    """Photos of one car (`car` set) or a single photo of unknown car (`car` None)."""

    car: str | None
    paths: list[Path]


def group_by_car(paths: Iterable[Path]) -> list[PhotoSet]:
    """Group `<car>_<NN>` photos by car (views sorted); other photos stand alone."""
    cars: dict[tuple[Path, str], list[tuple[int, Path]]] = {}
    singles: list[PhotoSet] = []
    for path in paths:
        parsed = parse_view_name(path)
        if parsed is None:
            singles.append(PhotoSet(None, [Path(path)]))
        else:
            cars.setdefault((Path(path).parent, parsed[0]), []).append((parsed[1], Path(path)))
    sets = [PhotoSet(car, [p for _, p in sorted(views)]) for (_, car), views in sorted(cars.items())]
    return sets + singles


def mask_path(photo: Path, masks_dir: Path) -> Path:
    """Kaggle mask name for a photo: `<car>_<NN>_mask.gif` in `masks_dir`."""
    return Path(masks_dir) / f"{Path(photo).stem}_mask.gif"


def masks_dir_for(data_dir: Path) -> Path:
    """`train_masks/` beside `train/`, given either the dataset root or `train/`."""
    data_dir = Path(data_dir)
    if (data_dir / "train_masks").is_dir():
        return data_dir / "train_masks"
    return data_dir.parent / f"{data_dir.name}_masks"


def photos_dir_for(data_dir: Path) -> Path:
    """The photo folder of a dataset root (`train/`), or the folder itself."""
    data_dir = Path(data_dir)
    return data_dir / "train" if (data_dir / "train").is_dir() else data_dir

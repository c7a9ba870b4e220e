"""The README picture: the shipped default model on a synthetic turntable set.

Rows are views of synthetic cars the model never saw (it was trained on real
photos); columns are the photo, its transparent cut-out over a checkerboard,
and the car over the seed write-up's green, both made by `carmask.remove`
with the car's other views (edges refined). Synthetic, so no real data ends
up in the repository.

    python benchmarks/readme_picture.py -o docs/cutout-example.png
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from carmask import Predictor
from carmask.cutout import SEED_GREEN, remove
from carmask.io import find_photos, read_photo
from carmask.kaggle import group_by_car
from carmask.synth import make_dataset


def checkerboard(height: int, width: int, cell: int = 16) -> np.ndarray:
    ys, xs = np.indices((height, width)) // cell
    return np.where(((ys + xs) % 2)[..., None] == 0, 255, 204).astype(np.float32).repeat(3, axis=2)


def over_checkerboard(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:].astype(np.float32) / 255
    back = checkerboard(*rgba.shape[:2])
    return np.round(rgba[..., :3] * alpha + back * (1 - alpha)).astype(np.uint8)


def row(predictor: Predictor, paths: list[Path], view: int) -> np.ndarray:
    """Photo | transparent cut-out | over green, for one view of a car's set (the one cut-out path)."""
    others = paths[:view] + paths[view + 1 :]
    cutouts = [remove(paths[view], predictor, background, views=others) for background in ("transparent", SEED_GREEN)]
    return np.hstack([read_photo(paths[view]), over_checkerboard(cutouts[0]), cutouts[1]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/cutout-example.png"))
    parser.add_argument("--model", help="default: the shipped models")
    parser.add_argument("--seed", type=int, default=3, help="synthetic set seed")
    parser.add_argument("--cars", type=int, default=2)
    parser.add_argument("--view", type=int, default=3, help="which view of each car (0-based)")
    args = parser.parse_args()

    predictor = Predictor(args.model, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(tmp, cars=args.cars, size=(360, 240), seed=args.seed)
        sets = group_by_car(find_photos([data / "train"]))
        picture = np.vstack([row(predictor, s.paths, args.view) for s in sets])
    Image.fromarray(picture).save(args.output, optimize=True)
    print(f"wrote {args.output} ({picture.shape[1]}x{picture.shape[0]})")


if __name__ == "__main__":
    main()

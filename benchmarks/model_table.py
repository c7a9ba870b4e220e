"""Measure the shipped models for `carmask models`, into src/carmask/weights/catalog.json.

CPU seconds per photo: the whole predictor (decode, background, model,
postprocess, run boundaries, as `carmask predict` does) on whole 16-view sets
of 1918x1280 test photos, one car of warm-up first, then `--cars` cars timed.
With `--dice`, held-out dice again (40 cars at 512x512, and the one with
1918x1280 masks), with and without hflip: slow on a CPU. `--merge` first adds
the catalog entries of a GPU run (benchmarks/gpu_train.py's results.json).

    python benchmarks/model_table.py --photos ../shared/data/carvana-test-1918/test
    python benchmarks/model_table.py --merge results.json --models multiview-accurate,rgb-accurate
    python benchmarks/model_table.py --dice --data ../shared/data
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from carmask import models
from carmask.devices import usable_cores
from carmask.files import atomic_write
from carmask.io import find_photos
from carmask.kaggle import group_by_car
from carmask.predict import Predictor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import held_out_cars, score  # noqa: E402


def cpu_seconds_per_photo(name: str, sets, repeats: int = 1) -> float:
    predictor = Predictor(name, device="cpu", refiner=None)  # the model alone
    for _ in predictor.predict_sets(sets[:1], encode=True):  # warm-up: load, first calls
        pass
    photos = sum(len(s.paths) for s in sets[1:]) * repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        for _ in predictor.predict_sets(sets[1:], encode=True):
            pass
    return (time.perf_counter() - t0) / photos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=Path("../shared/data/carvana-test-1918/test"))
    parser.add_argument("--cars", type=int, default=2, help="cars timed after the warm-up car")
    parser.add_argument("--models", help="comma-separated (default: every shipped model)")
    parser.add_argument("--merge", type=Path, help="a results.json of benchmarks/gpu_train.py")
    parser.add_argument("--dice", action="store_true", help="also measure held-out dice again")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()

    catalog = models.catalog()
    if args.merge:
        catalog.update(json.loads(args.merge.read_text())["catalog"])
    sets = [s for s in group_by_car(find_photos([args.photos])) if s.car][: args.cars + 1]
    if len(sets) < 2:
        parser.error(f"{args.photos}: need at least 2 cars of photos named <car>_<NN>.jpg")
    machine = f"{usable_cores()}-core {platform.machine()} CPU, torch {torch.__version__}, {datetime.date.today()}"
    for name in args.models.split(",") if args.models else models.shipped():
        entry = catalog.setdefault(name, {})
        entry["cpu_s_per_photo"] = round(cpu_seconds_per_photo(name, sets), 4)
        entry["cpu_measured"] = (
            f"{sum(len(s.paths) for s in sets[1:])} photos of 1918x1280, {machine}, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        if args.dice:
            train_dir = args.data / "carvana-512"
            full_masks = args.data / "carvana-1918-masks" / "train_masks"
            val_cars, full_cars = held_out_cars(train_dir, full_masks, None)
            row = score(name, train_dir, full_masks, val_cars, full_cars, "cpu")
            entry.update(
                {
                    "dice_512": round(row["512"], 4),
                    "dice_512_hflip": round(row["512_tta"], 4),
                    "dice_1918": round(row["1918"], 4),
                    "dice_1918_hflip": round(row["1918_tta"], 4),
                }
            )
        print(name, json.dumps(entry))
    text = json.dumps(dict(sorted(catalog.items())), indent=1) + "\n"
    atomic_write(models.CATALOG, lambda tmp: tmp.write_text(text))
    print(f"wrote {models.CATALOG}")


if __name__ == "__main__":
    main()

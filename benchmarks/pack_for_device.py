"""Pack a subset of the real data for a GPU machine that takes 64 MiB per call.

Keeps the held-out cars of the ablation's split (the same 40 as on the CPU, so
figures compare), their 1918x1280 masks, and as many training cars as the
budget allows, in the Kaggle layout, plus `split.json` naming both lists.
The folder must be ignored by git (never commit the data):

    echo /.device/ >> .git/info/exclude
    python benchmarks/pack_for_device.py --out .device/data --budget-mib 50
    # on the GPU machine, carrying .device:
    python benchmarks/ablation.py --data .device/data --split .device/data/split.json \\
        --size 512 --width 32 --minutes 5
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from carmask.data import discover, split_by_car


def car_files(car_examples) -> list[Path]:
    return [f for e in car_examples for f in (e.photo, e.mask)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path(".device/data"))
    parser.add_argument("--budget-mib", type=float, default=50.0)
    args = parser.parse_args()

    source = args.data / "carvana-512"
    cars = discover(source)
    train_cars, val_cars = split_by_car(list(cars), 0.15, 0)  # the ablation's split
    full_masks = args.data / "carvana-1918-masks" / "train_masks"
    budget, used, kept = args.budget_mib * 2**20, 0, []
    for car in val_cars + train_cars:
        files = car_files(cars[car]) + sorted(full_masks.glob(f"{car}_*"))
        size = sum(f.stat().st_size for f in files)
        if car in train_cars and used + size > budget:
            break
        for f in files:
            folder = args.out / f.parent.relative_to(args.data)
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, folder / f.name)
        used += size
        kept.append(car)
    packed_train = [c for c in kept if c in train_cars]
    (args.out / "split.json").write_text(json.dumps({"train": packed_train, "val": val_cars}, indent=1))
    print(f"{args.out}: {len(val_cars)} held-out and {len(packed_train)} of {len(train_cars)} training cars, "
          f"{used / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()

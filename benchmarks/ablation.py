"""Ablation on the real data, split by car, the same time budget for each recipe
(carmask.recipes): the seed CNN vs U-Nets on the photo alone (`rgb-fast`), on
the photo plus its differences from the car's median and mean backgrounds
(`multiview-uncropped`), and on those cropped to the car (`multiview-fast`).

Each recipe is trained for `--minutes` (the learning-rate schedule follows the
budget), then scored on the held-out cars at 512x512 and, for held-out cars
with full-size masks, at 1918x1280 (predicting from the 512x512 photos,
resizing probabilities, then thresholding), with and without hflip
test-time augmentation. Prints a Markdown table; `--write` saves it.

    python benchmarks/ablation.py --data ../shared/data --runs runs/ablation --minutes 17
    python benchmarks/ablation.py --models multiview-accurate --minutes 5   # on a GPU
    python benchmarks/ablation.py --models rgb-fast --set width=16 --set lr=1e-3
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from carmask.data import discover, split_by_car
from carmask.evaluate import evaluate, scored_sets
from carmask.io import parse_size
from carmask.predict import Predictor
from carmask.recipes import recipe
from carmask.train import train
from carmask.train_config import TrainConfig

DEFAULT_MODELS = "seed,rgb-fast,multiview-uncropped,multiview-fast"


def parse_set(items: list[str]) -> dict:
    """`--set field=value` pairs as recipe overrides: numbers, WxH sizes, true/false, comma lists."""
    overrides = {}
    for item in items:
        key, _, text = item.partition("=")
        if key in ("size", "frame"):
            value = parse_size(text)
        elif key == "channels":
            value = tuple(text.split(","))
        elif text.lower() in ("true", "false"):
            value = text.lower() == "true"
        else:
            value = text
            for number in (int, float):
                try:
                    value = number(text)
                    break
                except ValueError:
                    pass
        overrides[key] = value
    return overrides


def configs(names: list[str], minutes: float | None, overrides: dict) -> dict[str, TrainConfig]:
    """The recipes to compare, each with the same budget and overrides: what
    `carmask train --recipe NAME --max-minutes MINUTES` builds."""
    return {name: recipe(name, max_minutes=minutes, **overrides) for name in names}


def machine(device: str) -> str:
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def score(checkpoint, train_dir: Path, full_masks: Path, val_cars, full_cars, device: str) -> dict:
    """Held-out dice of a checkpoint at 512 and at 1918x1280, with and without hflip."""
    row = {}
    for tta in (False, True):
        predictor = Predictor(checkpoint, device=device, tta=tta)
        t0 = time.perf_counter()
        row[f"512{'_tta' * tta}"] = evaluate(predictor, train_dir, cars=val_cars).mean
        row[f"1918{'_tta' * tta}"] = (
            evaluate(predictor, train_dir, full_masks, (1918, 1280), cars=full_cars).mean if full_cars else float("nan")
        )
        row[f"eval_s{'_tta' * tta}"] = time.perf_counter() - t0
    return row


def table(rows: list[dict], val_cars: list[str], full_cars: list[str]) -> str:
    lines = [
        f"Held-out cars: {len(val_cars)} at 512x512 ({len(val_cars) * 16} images); "
        f"{len(full_cars)} of them have 1918x1280 masks ({len(full_cars) * 16} images).",
        "",
        "| model | input | dice 512 | dice 512 +hflip | dice 1918 | dice 1918 +hflip | training | machine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['input']} | {r['512']:.4f} | {r['512_tta']:.4f} | {r['1918']:.4f} "
            f"| {r['1918_tta']:.4f} | {r['train_min']:.1f} min, {r['epochs']} epochs | {r['machine']} |"
        )
    return "\n".join(lines)


def held_out_cars(train_dir: Path, full_masks: Path, split: Path | None) -> tuple[list[str], list[str]]:
    """The held-out cars (a split.json's 'val', else the 15% split by car every
    recipe uses) and those of them with 1918x1280 masks."""
    if split:
        val_cars = json.loads(split.read_text())["val"]
    else:
        _, val_cars = split_by_car(list(discover(train_dir)), 0.15, 0)
    full_sets, _ = scored_sets(train_dir, full_masks, val_cars)
    return val_cars, [s.car for s in full_sets]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--models", default=DEFAULT_MODELS, help="recipes, comma-separated")
    parser.add_argument(
        "--minutes", type=float, default=None, help="training budget per recipe (default: each recipe's own)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change a recipe field for every recipe, e.g. width=16, lr=1e-3, size=256x256",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--write", type=Path, help="also write the table to this Markdown file")
    parser.add_argument(
        "--split",
        type=Path,
        help="split.json whose 'val' cars to hold out (default: the 15%% split by car of every recipe)",
    )
    args = parser.parse_args()

    train_dir, full_masks = args.data / "carvana-512", args.data / "carvana-1918-masks" / "train_masks"
    val_cars, full_cars = held_out_cars(train_dir, full_masks, args.split)
    rows = []
    for name, config in configs(args.models.split(","), args.minutes, parse_set(args.set)).items():
        config.val_cars = val_cars
        run = args.runs / name
        if not (run / "best.pt").exists():
            train(train_dir, run, config, device=args.device, cache_dir=args.runs / "cache")
        meta = torch.load(run / "best.pt", weights_only=True)["meta"]
        row = {
            "model": name,
            "input": "x".join(map(str, config.spec.size)),
            "train_min": meta["train_seconds"] / 60,
            "epochs": meta["epochs"],
            "machine": machine(args.device),
            **score(run / "best.pt", train_dir, full_masks, val_cars, full_cars, args.device),
        }
        rows.append(row)
        print(json.dumps(row))
    text = table(rows, val_cars, full_cars)
    print(text)
    if args.write:
        args.write.write_text(text + "\n")


if __name__ == "__main__":
    main()

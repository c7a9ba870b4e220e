"""Ablation on the real data, split by car, the same time budget for each model:
seed CNN vs U-Net on the photo alone (`rgb`) vs U-Net on the photo plus its
differences from the car's median and mean backgrounds (`multiview`).

Each model is trained for `--minutes` (the learning-rate schedule follows the
budget), then scored on the held-out cars at 512x512 and, for held-out cars
with full-size masks, at 1918x1280 (predicting from the 512x512 photos,
resizing probabilities, then thresholding), with and without hflip
test-time augmentation. Prints a Markdown table; `--write` saves it.

    python benchmarks/ablation.py --data ../shared/data --runs runs/ablation --minutes 25
    python benchmarks/ablation.py --minutes 5 --size 512 --width 32   # on a GPU
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
from carmask.predict import Predictor
from carmask.train import SEED_SPEC, TrainConfig, train
from carmask.views import InputSpec


def configs(args) -> dict[str, TrainConfig]:
    size = (args.size, args.size)
    unet = dict(arch="unet", arch_kwargs={"width": args.width, "depth": args.depth}, epochs=10_000,
                batch_size=args.batch_size, lr=args.lr, weight_decay=1e-4, dice_weight=1.0,
                edge_weight=2.0, augment=True, schedule="cosine", max_minutes=args.minutes)
    return {
        "seed": TrainConfig(spec=SEED_SPEC, epochs=10_000, max_minutes=args.minutes),
        "rgb": TrainConfig(spec=InputSpec(("rgb",), size=size), **unet),
        "multiview": TrainConfig(spec=InputSpec(("rgb", "median_diff", "mean_diff"), size=size), **unet),
        # The background also finds the car: compare at twice the size (at most
        # the photos' 512), crop to the car, so the network's pixels land on it.
        "multiview-crop": TrainConfig(spec=InputSpec(("rgb", "median_diff", "mean_diff"), size=size,
                                                     frame=(min(2 * args.size, 512),) * 2, crop=True), **unet),
    }


def machine(device: str) -> str:
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--runs", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--models", default="seed,rgb,multiview", help="from seed, rgb, multiview, multiview-crop")
    parser.add_argument("--minutes", type=float, default=25.0, help="training budget per model")
    parser.add_argument("--size", type=int, default=128, help="U-Net input size (square)")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--write", type=Path, help="also write the table to this Markdown file")
    parser.add_argument("--split", type=Path, help="split.json whose 'val' cars to hold out "
                                                   "(e.g. from pack_for_device.py); default: a 15%% split by car")
    args = parser.parse_args()

    train_dir, full_masks = args.data / "carvana-512", args.data / "carvana-1918-masks" / "train_masks"
    if args.split:
        val_cars = json.loads(args.split.read_text())["val"]
    else:
        _, val_cars = split_by_car(list(discover(train_dir)), 0.15, 0)
    full_sets, _ = scored_sets(train_dir, full_masks, val_cars)
    full_cars = [s.car for s in full_sets]
    rows = []
    for name, config in configs(args).items():
        if name not in args.models.split(","):
            continue
        config.val_cars = val_cars
        run = args.runs / name
        if not (run / "best.pt").exists():
            train(train_dir, run, config, device=args.device, cache_dir=args.runs / "cache")
        meta = torch.load(run / "best.pt", weights_only=True)["meta"]
        row = {"model": name, "input": "x".join(map(str, config.spec.size)),
               "train_min": meta["train_seconds"] / 60, "epochs": meta["epochs"], "machine": machine(args.device)}
        for tta in (False, True):
            predictor = Predictor(run / "best.pt", device=args.device, tta=tta)
            t0 = time.perf_counter()
            row[f"512{'_tta' * tta}"] = evaluate(predictor, train_dir, cars=val_cars).mean
            row[f"1918{'_tta' * tta}"] = evaluate(predictor, train_dir, full_masks, (1918, 1280),
                                                  cars=full_cars).mean if full_cars else float("nan")
            row[f"eval_s{'_tta' * tta}"] = time.perf_counter() - t0
        rows.append(row)
        print(json.dumps(row))
    table = [f"Held-out cars: {len(val_cars)} at 512x512 ({len(val_cars) * 16} images); "
             f"{len(full_cars)} of them have 1918x1280 masks ({len(full_cars) * 16} images).", "",
             "| model | input | dice 512 | dice 512 +hflip | dice 1918 | dice 1918 +hflip | training | machine |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['model']} | {r['input']} | {r['512']:.4f} | {r['512_tta']:.4f} | {r['1918']:.4f} "
                     f"| {r['1918_tta']:.4f} | {r['train_min']:.1f} min, {r['epochs']} epochs | {r['machine']} |")
    print("\n".join(table))
    if args.write:
        args.write.write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()

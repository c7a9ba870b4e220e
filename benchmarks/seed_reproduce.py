"""Reproduce the seed write-up on the real data, split by car.

Trains the `seed` recipe (carmask.recipes: the seed CNN, 480x320 frame,
auto-crop, 100x100, photo + median difference, BCE, Adam 1e-3, batch 32, 40
epochs or 30 minutes) on carvana-512 unless the run folder already holds a
model, then prints:

- validation dice at the 100x100 working size (held-out cars), as the seed
  reported its 0.95;
- dice at 1918x1280 for the held-out cars that have full-size masks,
  predicting from their 512x512 photos (probabilities resized, then
  thresholded), and for all cars with full-size masks (most were trained on);
- the resize loss of the seed's geometry, soft and hard;
- training time and machine.

    python benchmarks/seed_reproduce.py --data ../shared/data --run runs/seed-real
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import torch

from carmask.data import discover, split_by_car
from carmask.evaluate import evaluate, resize_loss, scored_sets
from carmask.kaggle import mask_path
from carmask.predict import Predictor
from carmask.recipes import recipe
from carmask.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--run", type=Path, default=Path("runs/seed-real"))
    parser.add_argument("--epochs", type=int, help="default: the recipe's 40")
    parser.add_argument("--max-minutes", type=float, help="default: the recipe's 30")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    train_dir = args.data / "carvana-512"
    config = recipe("seed", epochs=args.epochs, max_minutes=args.max_minutes)
    if not (args.run / "best.pt").exists():
        train(train_dir, args.run, config, device=args.device)
    _, val_cars = split_by_car(list(discover(train_dir)), config.val_fraction, config.seed)
    with open(args.run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    best = max(rows, key=lambda r: float(r["val_dice"]))
    print(
        f"training: {len(rows)} epochs in {float(rows[-1]['seconds']) / 60:.1f} min on "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or 'cpu'} "
        f"({torch.get_num_threads()} threads)"
    )
    print(
        f"validation dice at 100x100 ({len(val_cars)} held-out cars): {float(best['val_dice']):.4f} "
        f"(epoch {best['epoch']}; the seed reported 0.95)"
    )

    predictor = Predictor(args.run / "best.pt", device=args.device)
    full_masks = args.data / "carvana-1918-masks" / "train_masks"
    sets, _ = scored_sets(train_dir, full_masks)
    full_cars = sorted(s.car for s in sets)
    held_out = [c for c in full_cars if c in val_cars]
    for label, cars in [("held-out", held_out), ("all", full_cars)]:
        if not cars:
            print(f"dice at 1918x1280, {label} cars: none of the cars with full-size masks")
            continue
        t0 = time.perf_counter()
        scores = evaluate(predictor, train_dir, full_masks, (1918, 1280), cars=cars)
        print(
            f"dice at 1918x1280, {label} cars ({len(cars)} cars, {len(scores.dice)} images): "
            f"{scores.mean:.4f}  [{time.perf_counter() - t0:.0f} s]"
        )
    masks = [mask_path(p, full_masks) for s in sets for p in s.paths]
    loss = resize_loss([m for m in masks if m.exists()], (100, 100))
    print(
        f"resize loss 1918x1280 -> 100x100 -> back ({loss['masks']} masks): "
        f"soft {loss['soft']:.4f}, hard {loss['hard']:.4f} (the seed reported 0.987)"
    )
    (args.run / "benchmark.json").write_text(
        json.dumps({"val_dice_100": float(best["val_dice"]), "epochs": len(rows), "held_out_full_cars": held_out})
    )


if __name__ == "__main__":
    main()

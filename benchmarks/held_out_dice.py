"""Dice of the shipped models on the ablation's held-out cars, from the photos on disk.

The split is the ablation's (`split_by_car(cars, 0.15, 0)` over carvana-512: 40
cars); dice at 512x512 over all of them, and at 1918x1280 over those with
full-size masks (predicting from the 512x512 photos, resizing the
probabilities, then thresholding). `--baseline REF` also scores the carmask of
another commit (a temporary git worktree) in the same run, so that a change
to the input path shows its effect on accuracy:

    python benchmarks/held_out_dice.py --baseline c30c025
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def score(data: Path, names: list[str], device: str) -> dict:
    from carmask.data import discover, split_by_car
    from carmask.evaluate import evaluate, scored_sets
    from carmask.predict import Predictor

    train_dir, full_masks = data / "carvana-512", data / "carvana-1918-masks" / "train_masks"
    _, val_cars = split_by_car(list(discover(train_dir)), 0.15, 0)
    full_cars = [s.car for s in scored_sets(train_dir, full_masks, val_cars)[0]]
    rows = {}
    for name in names:
        predictor = Predictor(name, device=device, refiner=None)  # the model alone
        start = time.perf_counter()
        at_512 = evaluate(predictor, train_dir, cars=val_cars)
        at_1918 = evaluate(predictor, train_dir, full_masks, (1918, 1280), cars=full_cars)
        rows[name] = {
            "dice_512": round(at_512.mean, 5),
            "images_512": len(at_512.dice),
            "dice_1918": round(at_1918.mean, 5),
            "images_1918": len(at_1918.dice),
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(name, json.dumps(rows[name]), file=sys.stderr)
    return {"val_cars": len(val_cars), "full_cars": len(full_cars), "models": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--models", default="multiview,rgb,seed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--baseline", metavar="REF", help="also score this commit's carmask (a git worktree)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    figures = {"this": score(args.data.absolute(), args.models.split(","), args.device)}
    if args.baseline:
        from baseline import describe, python_with, worktree

        with worktree(args.baseline) as src, tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "baseline.json"
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--data",
                    str(args.data.absolute()),
                    "--models",
                    args.models,
                    "--device",
                    args.device,
                    "--json",
                    str(out),
                ],
                env=python_with(src),
                check=True,
            )
            figures["baseline"] = {**json.loads(out.read_text())["this"], "ref": describe(args.baseline)}
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


def report(figures: dict) -> None:
    this = figures["this"]
    print(f"held-out cars: {this['val_cars']} at 512x512, {this['full_cars']} of them at 1918x1280")
    print(
        "| model | dice 512 | dice 1918 |"
        + (" baseline 512 | baseline 1918 | change 512 | change 1918 |" if "baseline" in figures else "")
    )
    print("|---|---|---|" + ("---|---|---|---|" if "baseline" in figures else ""))
    for name, row in this["models"].items():
        line = f"| {name} | {row['dice_512']:.4f} | {row['dice_1918']:.4f} |"
        if "baseline" in figures:
            old = figures["baseline"]["models"][name]
            line += (
                f" {old['dice_512']:.4f} | {old['dice_1918']:.4f} | {row['dice_512'] - old['dice_512']:+.4f} "
                f"| {row['dice_1918'] - old['dice_1918']:+.4f} |"
            )
        print(line)
    if "baseline" in figures:
        print(f"baseline: {figures['baseline']['ref']}")


if __name__ == "__main__":
    main()

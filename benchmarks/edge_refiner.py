"""The learned edge refiner (`carmask.models.refiner`): dice before and after it, and its CPU cost.

Dice on the validation cars: the ablation's 40 held-out cars (`split_by_car(cars,
0.15, 0)` over carvana-512, the cars the shipped coarse models never trained on)
less any the refiner trained on (its checkpoint's `train_on_val`). For each
coarse model (`multiview-fast` on sets, the studio the median of the views
that show it; `rgb-fast` on each photo alone, the studio estimated from the photo),
with and without hflip TTA (the coarse model's): the predictor without and
with `refiner=` (the one path); dice at 512, and at 1918x1280 on the cars with
full-size masks (the 512 photos predicted at 1918x1280, the refiner at 512
before the resize).

Cost on the CPU (a test car of 16 photos at 1918x1280, warm, median of
`--repeats`): `refine_batch` and the studio per 512x512 photo, and per
1918x1280 photo what the refiner adds to a prediction: the photo taken to
512x512, the studio, the refiner, and the refined 512x512 probabilities
resized to 1918x1280; for 1 and 2 torch threads; one warm cut-out of a
1918x1280 photo (`remove`), without and with the refiner. And `carmask predict`'s
speed at 1918x1280 on the 640 test photos, without and with the refiner,
alternately (`--rounds`).

    python benchmarks/edge_refiner.py --data ../shared/data [--refiner PATH] [--rgb-refiner PATH] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from carmask.cutout import remove
from carmask.data import discover, split_by_car
from carmask.evaluate import scored_sets
from carmask.inputs.decode import decode
from carmask.inputs.resize import resize_map
from carmask.io import read_mask
from carmask.kaggle import group_by_car, mask_path
from carmask.metrics import dice
from carmask.models import refiner as rf
from carmask.models import refiner_frames as frames
from carmask.predict import Predictor

SHIPPED = Path(rf.__file__).resolve().parents[1] / "weights" / "refiners"
COST_CAR = "0004d4463b50"  # a test car: 16 views at 1918x1280


def validation_cars(train_dir: Path, refiners: list[dict]) -> list[str]:
    """The 40 held-out cars less those any of the refiners trained on."""
    _, held_out = split_by_car(list(discover(train_dir)), 0.15, 0)
    used = {car for meta in refiners for car in meta.get("config", {}).get("train_on_val", [])}
    return [c for c in held_out if c not in used]


def scores(
    coarse: str, refiner: Path, studio: str, tta: bool, train_dir: Path, full_masks: Path, cars: list[str]
) -> dict:
    """Per-photo dice without and with the refiner, through the predictor (the
    one path: `Predictor(refiner=...)`), at 512 and, for the cars with
    full-size masks, with the 512 photos predicted at 1918x1280."""
    sets_mode = "never" if studio == "photo" else "auto"
    predictors = [
        Predictor(coarse, device="cpu", tta=tta, sets=sets_mode, upright=False, refiner=r) for r in (None, refiner)
    ]
    sets, masks_dir = scored_sets(train_dir, None, cars)
    out = {"512": ([], []), "1918": ([], [])}
    for photo_set in sets:
        truths = [read_mask(mask_path(path, masks_dir)) for path in photo_set.paths]
        full = [mask_path(path, full_masks) for path in photo_set.paths]
        big = [read_mask(f) for f in full] if all(f.exists() for f in full) else []
        for i, predictor in enumerate(predictors):
            for truth, prediction in zip(truths, predictor.predict_sets([photo_set])):
                out["512"][i].append(dice(prediction.probs > 0.5, truth))
            if big:
                size = (big[0].shape[1], big[0].shape[0])
                for truth, prediction in zip(big, predictor.predict_sets([photo_set], output_size=size)):
                    out["1918"][i].append(dice(prediction.probs > 0.5, truth))
    return {
        size: {
            "before": round(float(np.mean(b)), 5) if b else None,
            "after": round(float(np.mean(a)), 5) if a else None,
            "photos": len(b),
            "better": int(np.sum(np.array(a) > np.array(b))),
            "worse": int(np.sum(np.array(a) < np.array(b))),
        }
        for size, (b, a) in out.items()
    }


def median_seconds(work, repeats: int) -> float:
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cost(test_dir: Path, refiner: rf.EdgeRefiner, repeats: int) -> dict:
    """ms per photo: at 512x512 (studio, refiner) and what the refiner adds per 1918x1280 photo."""
    paths = sorted(test_dir.glob(f"{COST_CAR}_*.jpg"))
    full = torch.stack([decode(p, upright=False) for p in paths])  # 16 x 3 x 1280 x 1918
    coarse = torch.from_numpy(
        np.stack(
            [
                p.probs
                for p in Predictor("multiview-fast", device="cpu", refiner=None).predict_sets(
                    group_by_car(paths), output_size=rf.SIZE
                )
            ]
        )
    )  # at 512x512
    n, (width, height) = len(paths), (full.shape[-1], full.shape[-2])
    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        photos = frames.to_refiner_size(full)
        studios = frames.set_studios(photos, [n], coarse)
        row = {
            "set studio, 512": median_seconds(lambda: frames.set_studios(photos, [n], coarse), repeats),
            "single-photo studio, 512": median_seconds(lambda: frames.photo_studio(photos, coarse), repeats),
            "refiner, 512": median_seconds(lambda: frames.refine_batch(refiner, photos, studios, coarse), repeats),
            "photo to 512": median_seconds(lambda: frames.to_refiner_size(full), repeats),
            "refined 512 to 1918x1280": median_seconds(lambda: resize_map(coarse[:, None], (width, height)), repeats),
        }
        row = {k: round(1000 * v / n, 2) for k, v in row.items()}
        row["per 512x512 photo, set"] = round(row["set studio, 512"] + row["refiner, 512"], 2)
        row["per 512x512 photo, single"] = round(row["single-photo studio, 512"] + row["refiner, 512"], 2)
        row["added per 1918x1280 photo, set"] = round(
            row["photo to 512"] + row["per 512x512 photo, set"] + row["refined 512 to 1918x1280"], 2
        )
        out[f"{threads} thread{'s' * (threads > 1)}"] = row
    out["band pixels per photo"] = int(len(frames.band(coarse, refiner.low)) / n)
    return out


def predict_speed(test_dir: Path, refiner: Path, rounds: int, tta: bool = False) -> dict:
    """photos/s of the whole predictor, JPEG files to run boundaries at 1918x1280
    (as `carmask predict` computes them), without and with the refiner
    (`Predictor(refiner=...)`), alternately."""
    sets = group_by_car(sorted(test_dir.glob("*.jpg")))
    photos = sum(len(s.paths) for s in sets)
    out: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(rounds):
        for name, path in (("without", None), ("with", refiner)):
            with Predictor(device="cpu", upright=False, refiner=path, tta=tta) as predictor:
                start = time.perf_counter()
                for prediction in predictor.predict_sets(sets, encode=True):
                    assert prediction.error is None, prediction.error
                out[name].append(round(photos / (time.perf_counter() - start), 1))
    return {"photos": photos, "tta": tta, "photos_per_s": out}


def cutout_latency(test_dir: Path, refiner: Path, repeats: int) -> dict:
    """Seconds of one warm cut-out of a 1918x1280 test photo (`remove`, the
    photo alone), without and with the refiner, alternately; median of `repeats`."""
    photo = sorted(test_dir.glob(f"{COST_CAR}_*.jpg"))[0]
    predictors = {"without": Predictor(device="cpu", refiner=None), "with": Predictor(device="cpu", refiner=refiner)}
    times: dict[str, list[float]] = {name: [] for name in predictors}
    for predictor in predictors.values():
        remove(photo, predictor)  # warm-up: the models loaded, first allocations
    for _ in range(repeats):
        for name, predictor in predictors.items():
            start = time.perf_counter()
            remove(photo, predictor)
            times[name].append(time.perf_counter() - start)
    return {name: round(statistics.median(t), 3) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--refiner", type=Path, default=SHIPPED / "edge-refiner-fast.pt")
    parser.add_argument("--rgb-refiner", type=Path, help="for single photos (default: --refiner)")
    parser.add_argument("--skip", default="", help="comma-separated: sets, single, tta, cost, speed")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the predict speed comparison")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--speed-tta", action="store_true", help="the predict speed comparison with hflip TTA")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    skip = set(args.skip.split(","))

    refiner, meta = rf.load(args.refiner)
    single_path = args.rgb_refiner or args.refiner
    single_meta = rf.load(single_path)[1]
    train_dir, full_masks = args.data / "carvana-512", args.data / "carvana-1918-masks" / "train_masks"
    cars = validation_cars(train_dir, [meta, single_meta])
    full_cars = [s.car for s in scored_sets(train_dir, full_masks, cars)[0]]
    figures = {
        "refiner": str(args.refiner),
        "meta": {k: meta.get(k) for k in ("train_seconds", "steps", "coarse")},
        "validation cars": len(cars),
        "cars with 1918x1280 masks": full_cars,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "load average": os.getloadavg(),
    }
    runs = [("multiview-fast", args.refiner, "set", "sets")] * ("sets" not in skip) + [
        ("rgb-fast", single_path, "photo", "single")
    ] * ("single" not in skip)
    for coarse, model, studio, label in runs:
        for tta in (False, True) if "tta" not in skip else (False,):
            name = f"{label}: {coarse}{' +hflip' * tta}"
            start = time.perf_counter()
            figures[name] = scores(coarse, model, studio, tta, train_dir, full_masks, cars)
            figures[name]["seconds"] = round(time.perf_counter() - start)
            print(name, json.dumps(figures[name]), flush=True)
    if "cost" not in skip:
        figures["cost ms per photo"] = cost(args.data / "carvana-test-1918" / "test", refiner, args.repeats)
        figures["cut-out seconds"] = cutout_latency(args.data / "carvana-test-1918" / "test", args.refiner, 7)
        print("one warm 1918x1280 cut-out, s:", json.dumps(figures["cut-out seconds"]), flush=True)
    if "speed" not in skip:
        figures["predict at 1918x1280"] = predict_speed(
            args.data / "carvana-test-1918" / "test", args.refiner, args.rounds, args.speed_tta
        )
        print(json.dumps(figures["predict at 1918x1280"]), flush=True)
    figures["load average after"] = os.getloadavg()
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


def report(figures: dict) -> None:
    print(
        f"validation cars: {figures['validation cars']} at 512x512; "
        f"{len(figures['cars with 1918x1280 masks'])} of them with 1918x1280 masks"
    )
    print("| coarse | dice 512 before | after | dice 1918 before | after | photos better / worse (512) |")
    print("|---|---|---|---|---|---|")
    for name, row in figures.items():
        if isinstance(row, dict) and "512" in row:
            big = row["1918"]
            print(
                f"| {name} | {row['512']['before']:.5f} | {row['512']['after']:.5f} | "
                f"{big['before'] or float('nan'):.5f} | {big['after'] or float('nan'):.5f} | "
                f"{row['512']['better']} / {row['512']['worse']} |"
            )
    if "cost ms per photo" in figures:
        print(json.dumps(figures["cost ms per photo"], indent=1))


if __name__ == "__main__":
    main()

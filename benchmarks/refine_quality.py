"""What the edge refinement (`carmask.refine.edges`) changes: alpha error, dice and cost.

1. Synthetic turntable sets with soft edges of known alpha (`synth.render_soft_view`):
   SAD and gradient error (Rhemann et al. 2009: Gaussian derivatives, sigma 1.4;
   both / 1000 per photo) of the plain cut-out's alpha (the network's soft edge)
   and of the refined one, each photo alone and with its set. The coarse
   probabilities are what a 128-pixel network gives: the true alpha at 1/12
   scale, its edge moved a little by a smooth random field, scaled back up.
2. With --data: dice through the predictor itself (`Predictor(refine=edges)`
   against `Predictor()`, `carmask.evaluate`) on the ablation's held-out cars
   (`split_by_car(cars, 0.15, 0)` over carvana-512): at 512x512, and at
   1918x1280 on those with full-size masks, predicted from the 512x512 photos
   (refined at the photos' size, alpha resized, > 0.5); `--all-1918` adds the
   other cars with full-size masks (training cars: the change, not the level).
3. Cost of the refinement per 1918x1280 photo (a real test car with --data or
   --photos, else a synthetic set scaled up), as the predictor calls it, for 1
   and 2 torch threads; and a whole single cut-out (`remove`) with and without
   it, in turn. With --device cuda: the same code on CUDA tensors (timed with
   the device synchronised), cut-outs of the car's set through the predictor
   on the GPU, and how far its alpha is from the CPU's.

    python benchmarks/refine_quality.py [--data ../shared/data] [--json out.json]
    python benchmarks/refine_quality.py --skip synthetic,dice --photos DIR --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from carmask.predict import Batch
from carmask.refine import edges, plain
from carmask.synth import random_car, render_soft_view, studio_background


def sad(alpha: np.ndarray, truth: np.ndarray) -> float:
    return float(np.abs(alpha - truth).sum() / 1000)


def gradient_error(alpha: np.ndarray, truth: np.ndarray, sigma: float = 1.4) -> float:
    def magnitude(a):
        along_x, along_y = (ndimage.gaussian_filter(a, sigma, order=order) for order in ((0, 1), (1, 0)))
        return np.hypot(along_x, along_y)

    return float(((magnitude(alpha) - magnitude(truth)) ** 2).sum() / 1000)


def coarse(alpha: torch.Tensor, seed: int) -> torch.Tensor:
    n, height, width = alpha.shape
    generator = torch.Generator().manual_seed(seed)
    low = F.interpolate(alpha[:, None], size=(height // 12, width // 12), mode="bilinear", antialias=True)
    shift = F.interpolate(torch.rand((n, 1, 6, 9), generator=generator) - 0.5, size=low.shape[-2:], mode="bilinear")
    return F.interpolate(torch.sigmoid((low - 0.5 + 0.5 * shift) * 16), size=(height, width), mode="bilinear")[:, 0]


def alphas(hook, photos: torch.Tensor, probs: torch.Tensor, as_set: bool) -> np.ndarray:
    """The hook's alpha (N x H x W, 0..1) for photos taken alone or as one set."""
    n = len(photos)
    out = hook(Batch(list(photos), [list(range(n)) if as_set else [i] for i in range(n)], list(probs)))
    return np.stack([e.alpha.numpy() / 255 for e in out])


def synthetic(size: tuple[int, int], cars: int, views: int) -> dict:
    rows: dict[str, list] = {"plain": [], "refined, single photos": [], "refined, sets": []}
    for seed in range(cars):
        background = studio_background(*size, seed=seed)
        rng = np.random.default_rng(seed)
        car = random_car(rng)
        rendered = [render_soft_view(background, car, v, views, rng, supersample=2) for v in range(1, views + 1)]
        photos = torch.from_numpy(np.stack([p for p, _ in rendered])).permute(0, 3, 1, 2)
        truth = np.stack([a for _, a in rendered])
        probs = coarse(torch.from_numpy(truth), seed)
        found = {
            "plain": alphas(plain, photos, probs, False),
            "refined, single photos": alphas(edges, photos, probs, False),
            "refined, sets": alphas(edges, photos, probs, True),
        }
        for name, alpha in found.items():
            rows[name] += [(sad(a, t), gradient_error(a, t)) for a, t in zip(alpha, truth)]
    return {
        name: {
            "sad": round(float(np.mean([r[0] for r in values])), 3),
            "gradient": round(float(np.mean([r[1] for r in values])), 3),
            "photos": len(values),
        }
        for name, values in rows.items()
    }


def real_dice(data: Path, all_1918: bool) -> dict:
    from carmask.data import discover, split_by_car
    from carmask.evaluate import evaluate, scored_sets
    from carmask.predict import Predictor

    train_dir, full_masks = data / "carvana-512", data / "carvana-1918-masks" / "train_masks"
    _, held_out = split_by_car(list(discover(train_dir)), 0.15, 0)
    full_cars = [s.car for s in scored_sets(train_dir, full_masks, None if all_1918 else held_out)[0]]
    out = {"held_out_cars": len(held_out), "cars_1918": full_cars}
    for name, refine in (("plain", None), ("refined", edges)):
        predictor = Predictor(device="cpu", refine=refine)
        at_512 = evaluate(predictor, train_dir, cars=held_out)
        at_1918 = evaluate(predictor, train_dir, full_masks, (1918, 1280), cars=full_cars)
        out[name] = {"dice_512": at_512.dice, "dice_1918": at_1918.dice}
    summary = {key: out[key] for key in ("held_out_cars", "cars_1918")}
    for size in ("dice_512", "dice_1918"):
        before, after = out["plain"][size], out["refined"][size]
        names = sorted(before)
        change = np.array([after[n] - before[n] for n in names])
        summary[size] = {
            "plain": round(float(np.mean([before[n] for n in names])), 5),
            "refined": round(float(np.mean([after[n] for n in names])), 5),
            "images": len(names),
            "better": int((change > 0).sum()),
            "worse": int((change < 0).sum()),
        }
    return summary


COST_CAR = "0004d4463b50"  # a test car: 16 views at 1918x1280


def cost_photos(test: Path | None) -> tuple[list[torch.Tensor], list[torch.Tensor], list[Path]]:
    """16 photos of one car at 1918x1280, their probabilities, and their files (none if synthetic)."""
    from carmask.predict import Predictor

    paths = sorted(test.glob(f"{COST_CAR}_*.jpg")) if test and test.is_dir() else []
    if paths:
        predictions = Predictor(device="cpu").predict_views([(str(p), p) for p in paths])
        from carmask.io import read_photo

        photos = [torch.from_numpy(read_photo(p)).permute(2, 0, 1) for p in paths]
        return photos, [torch.from_numpy(p.probs) for p in predictions], paths
    background = studio_background(480, 320, seed=0)
    rng = np.random.default_rng(0)
    car = random_car(rng)
    rendered = [render_soft_view(background, car, v, 16, rng, supersample=2) for v in range(1, 17)]
    photos = (
        F.interpolate(
            torch.from_numpy(np.stack([p for p, _ in rendered])).permute(0, 3, 1, 2).float(),
            size=(1280, 1918),
            mode="bilinear",
        )
        .round()
        .byte()
    )
    probs = coarse(
        F.interpolate(
            torch.from_numpy(np.stack([a for _, a in rendered]))[:, None], size=(1280, 1918), mode="bilinear"
        )[:, 0],
        0,
    )
    return [p.permute(1, 2, 0).contiguous().permute(2, 0, 1) for p in photos], list(probs), []


def cost(test: Path | None, repeats: int = 5) -> dict:
    photos, probs, paths = cost_photos(test)
    one, n = (paths[1] if paths else None), len(photos)
    batches = {
        "set of 16": Batch(photos, [list(range(n))] * n, probs),
        "16 single photos": Batch(photos, [[i] for i in range(n)], probs),
    }
    out, threads = {"photos": f"real test car {COST_CAR}" if one else "synthetic, scaled up"}, torch.get_num_threads()
    for count in sorted({1, min(2, os.cpu_count() or 1)}):
        torch.set_num_threads(count)
        for name, batch in batches.items():
            edges(batch)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                edges(batch)
                times.append((time.perf_counter() - start) / n)
            out[f"refine s/photo, {name}, {count} thread(s)"] = round(float(np.median(times)), 4)
    torch.set_num_threads(threads)
    if one is not None:  # a whole cut-out, with and without the refinement, in turn
        from carmask.cutout import remove
        from carmask.predict import Predictor

        predictor = Predictor(device="cpu")
        times: dict[bool, list[float]] = {True: [], False: []}
        for refine in (True, False):
            remove(one, predictor, refine=refine)
        for _ in range(repeats * 2):
            for refine in (True, False):
                start = time.perf_counter()
                remove(one, predictor, refine=refine)
                times[refine].append(time.perf_counter() - start)
        out["remove() s, refined"] = round(float(np.median(times[True])), 4)
        out["remove() s, plain"] = round(float(np.median(times[False])), 4)
        out["remove() torch threads"] = threads
    out["load average"] = round(os.getloadavg()[0], 2)
    return out


def gpu_cost(test: Path | None, device: str, repeats: int = 10) -> dict:
    """The refinement and whole cut-outs on a CUDA device, and its alpha against the CPU's."""
    from carmask.predict import Predictor

    photos, probs, paths = cost_photos(test)
    n = len(photos)
    out = {
        "photos": f"real test car {COST_CAR}" if paths else "synthetic, scaled up",
        "device": torch.cuda.get_device_name(device),
    }
    on = [p.to(device) for p in photos], [p.to(device) for p in probs]
    for name, views in (("set of 16", [list(range(n))] * n), ("16 single photos", [[i] for i in range(n)])):
        batch = Batch(on[0], views, on[1])
        edges(batch)
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            edges(batch)
        torch.cuda.synchronize(device)
        out[f"refine ms/photo, {name}"] = round((time.perf_counter() - start) / repeats / n * 1000, 3)
        cpu = [e.alpha.numpy().astype(int) for e in edges(Batch(photos, views, probs))]
        gpu = [e.alpha.cpu().numpy().astype(int) for e in edges(batch)]
        differ = [np.abs(c - g) for c, g in zip(cpu, gpu)]
        out[f"alpha vs CPU, {name}: max |difference| /255"] = int(max(d.max() for d in differ))
        out[f"alpha vs CPU, {name}: pixels differing by > 2"] = int(sum((d > 2).sum() for d in differ))
    if paths:
        predictor = Predictor(device=device)
        items = [(str(p), p) for p in paths]
        for kind in (None, "plain", "refined"):
            predictor.predict_views(items, cutout=kind)
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(repeats):
                predictor.predict_views(items, cutout=kind)
            out[f"predict_views ms/photo, cutout={kind}"] = round((time.perf_counter() - start) / repeats / n * 1000, 2)
        out["nvjpeg"] = predictor.decoder.uses_nvjpeg
    out["peak GPU MiB"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="960x640", help="synthetic photo size, WxH")
    parser.add_argument("--cars", type=int, default=3)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--data", type=Path, help="../shared/data: dice on held-out cars, cost on real photos")
    parser.add_argument("--photos", type=Path, help="folder with the test car's photos (default: in --data)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the cost on a GPU")
    parser.add_argument("--all-1918", action="store_true", help="dice at 1918x1280 on every car with full masks")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: synthetic, dice, cost")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    skip, result = set(args.skip.split(",")), {}
    if "synthetic" not in skip:
        result["synthetic"] = synthetic((width, height), args.cars, args.views)
        print(json.dumps({"synthetic": result["synthetic"]}, indent=1), flush=True)
    if args.data and "dice" not in skip:
        result["dice"] = real_dice(args.data, args.all_1918)
        print(json.dumps({"dice": result["dice"]}, indent=1), flush=True)
    test = args.photos or (args.data / "carvana-test-1918" / "test" if args.data else None)
    if "cost" not in skip:
        result["cost"] = cost(test) if args.device == "cpu" else gpu_cost(test, args.device)
        print(json.dumps({"cost": result["cost"]}, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

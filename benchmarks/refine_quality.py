"""What the edge refinement (`carmask.refine`) changes: alpha error, dice and cost.

1. Synthetic turntable sets with soft edges of known alpha (`synth.render_soft_view`):
   SAD and gradient error (Rhemann et al. 2009: Gaussian derivatives, sigma 1.4;
   both / 1000) of the plain cut-out's alpha and of the refined one, without and
   with the car's views. The coarse probabilities are what a 128-pixel network
   gives: the true alpha at 1/12 scale, its edge moved a little by a smooth
   random field, scaled back up.
2. Cost of `refine` per 1918x1280 photo on this machine's CPU threads.
3. With --data: dice at 1918x1280 on the held-out cars that have full-size
   masks (`split_by_car(cars, 0.15, 0)` over carvana-512), predicted from the
   512x512 photos with the shipped models: masks from the refined alpha > 0.5
   against the plain probabilities > 0.5.

    python benchmarks/refine_quality.py [--data ../shared/data] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from carmask.cutout import alpha_from_probs
from carmask.refine import refine
from carmask.synth import random_car, render_soft_view, studio_background


def sad(alpha: np.ndarray, truth: np.ndarray) -> float:
    return float(np.abs(alpha - truth).sum() / 1000)


def gradient_error(alpha: np.ndarray, truth: np.ndarray, sigma: float = 1.4) -> float:
    magnitude = lambda a: np.hypot(ndimage.gaussian_filter(a, sigma, order=(0, 1)),  # noqa: E731
                                   ndimage.gaussian_filter(a, sigma, order=(1, 0)))
    return float(((magnitude(alpha) - magnitude(truth)) ** 2).sum() / 1000)


def coarse(alpha: torch.Tensor, seed: int) -> torch.Tensor:
    n, height, width = alpha.shape
    generator = torch.Generator().manual_seed(seed)
    low = F.interpolate(alpha[:, None], size=(height // 12, width // 12), mode="bilinear", antialias=True)
    shift = F.interpolate(torch.rand((n, 1, 6, 9), generator=generator) - 0.5, size=low.shape[-2:], mode="bilinear")
    return F.interpolate(torch.sigmoid((low - 0.5 + 0.5 * shift) * 16), size=(height, width), mode="bilinear")[:, 0]


def synthetic(size: tuple[int, int], cars: int, views: int) -> dict:
    rows = {"plain": [], "refined, single photo": [], "refined, with views": []}
    for seed in range(cars):
        background = studio_background(*size, seed=seed)
        rng = np.random.default_rng(seed)
        car = random_car(rng)
        rendered = [render_soft_view(background, car, v, views, rng, supersample=2) for v in range(1, views + 1)]
        photos = torch.from_numpy(np.stack([p for p, _ in rendered])).permute(0, 3, 1, 2).contiguous()
        truth = np.stack([a for _, a in rendered])
        probs = coarse(torch.from_numpy(truth), seed)
        alphas = {"plain": alpha_from_probs(probs.numpy()) / 255,
                  "refined, single photo": refine(photos, probs)[0].numpy(),
                  "refined, with views": refine(photos, probs, photos, probs)[0].numpy()}
        for name, alpha in alphas.items():
            rows[name] += [(sad(a, t), gradient_error(a, t)) for a, t in zip(alpha, truth)]
    return {name: {"sad": round(float(np.mean([r[0] for r in values])), 3),
                   "gradient": round(float(np.mean([r[1] for r in values])), 3)} for name, values in rows.items()}


def cost(repeats: int = 5) -> dict:
    """Seconds per 1918x1280 photo: a synthetic set scaled up, 4 photos per call."""
    background = studio_background(480, 320, seed=0)
    rng = np.random.default_rng(0)
    car = random_car(rng)
    rendered = [render_soft_view(background, car, v, 8, rng, supersample=2) for v in range(1, 9)]
    photos = F.interpolate(torch.from_numpy(np.stack([p for p, _ in rendered])).permute(0, 3, 1, 2).float(),
                           size=(1280, 1918), mode="bilinear").round().byte()
    probs = coarse(F.interpolate(torch.from_numpy(np.stack([a for _, a in rendered]))[:, None],
                                 size=(1280, 1918), mode="bilinear")[:, 0], 0)
    out = {}
    for name, views in (("single photo", (None, None)), ("with views", (photos, probs))):
        refine(photos[:4], probs[:4], *views)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            refine(photos[:4], probs[:4], *views)
            times.append((time.perf_counter() - start) / 4)
        out[name] = round(float(np.median(times)), 4)
    return {"seconds_per_photo": out, "threads": torch.get_num_threads()}


def real_dice(data: Path) -> dict:
    from carmask import Predictor
    from carmask.data import split_by_car
    from carmask.io import find_photos, group_by_car, read_mask, read_photo
    from carmask.views import resize
    photos_dir, masks_dir = data / "carvana-512" / "train", data / "carvana-1918-masks" / "train_masks"
    sets = group_by_car(find_photos([photos_dir]))
    _, held_out = split_by_car([s.car for s in sets], 0.15, 0)
    with_masks = {p.name.split("_")[0] for p in masks_dir.glob("*_mask.gif")}
    predictor = Predictor()
    dice = {"plain": [], "refined": []}
    for photo_set in (s for s in sets if s.car in set(held_out) & with_masks):
        predictions = predictor.predict_views([(str(p), p) for p in photo_set.paths], output_size=(1918, 1280))
        big = torch.stack([torch.from_numpy(np.array(resize(read_photo(p), (1918, 1280))))
                           for p in photo_set.paths]).permute(0, 3, 1, 2).contiguous()
        probs = torch.stack([torch.from_numpy(p.probs) for p in predictions])
        for start in range(0, len(big), 4):
            alpha, _ = refine(big[start:start + 4], probs[start:start + 4], big, probs)
            for i, a in enumerate(alpha.numpy(), start):
                truth = read_mask(masks_dir / f"{photo_set.paths[i].stem}_mask.gif").astype(bool)
                for name, mask in (("plain", probs[i].numpy() > 0.5), ("refined", a > 0.5)):
                    dice[name].append(2 * (mask & truth).sum() / (mask.sum() + truth.sum()))
    return {"cars": sorted(set(held_out) & with_masks), "images": len(dice["plain"]),
            **{name: round(float(np.mean(values)), 5) for name, values in dice.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="960x640", help="synthetic photo size, WxH")
    parser.add_argument("--cars", type=int, default=3)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--data", type=Path, help="../shared/data: also dice at 1918x1280 on held-out cars")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    result = {"synthetic": synthetic((width, height), args.cars, args.views), "cost": cost()}
    print(json.dumps(result, indent=1))
    if args.data:
        result["real_dice_1918"] = real_dice(args.data)
        print(json.dumps(result["real_dice_1918"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

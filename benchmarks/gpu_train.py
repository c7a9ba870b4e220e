"""Issue 13 in one device call: train the accurate models on every training car,
score them on the held-out cars, and write them for shipping.

Joins the packed parts (benchmarks/pack_for_device.py) into one Kaggle-layout
folder, then for each recipe in turn while time is left (`multiview-accurate`,
then `rgb-accurate`): builds its input cache (one process per core), trains it
on the 230 training cars with the ablation's 40 held-out cars as validation
(they pick the best epoch, as for the shipped models), and scores it on those
40 cars at 512x512 and, for those with 1918x1280 masks, at 1918x1280, with and
without hflip (in a second process, while the next recipe trains). It writes to
OUT, after each model so that a run cut short still returns what it finished:
the weights in half precision (<name>.pt, under 16 MiB), a model card
(<name>.md), and results.json (figures, epoch logs, timings, the catalog
entries for `carmask models`). A table is printed last.

Time: everything keeps inside `--deadline` minutes from the start. Once a
recipe's cache is built, what is left, less the set-up and caches still to
come and the last model's scoring (earlier ones are scored while the next
trains), is training time: the first recipe takes `--share` of it, the last
all that remains (a recipe left under 45 s is skipped).

    # here, a dry run: a small packed subset, a tiny budget and network, on the CPU
    python benchmarks/pack_for_device.py --out .device/dry --train-cars 8 --val-cars 2
    python benchmarks/gpu_train.py --parts .device/dry/part1 .device/dry/part2 --out runs/gpu-dry \\
        --deadline 5 --device cpu --set width=4 --set size=64x64 --set frame=128x128 --set batch_size=8
    # on the GPU machine: the two calls in docs/RESULTS.md, "GPU runs still to make"
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import json
import multiprocessing
import os
import shutil
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

START = time.monotonic()

import torch  # noqa: E402
from ablation import held_out_cars, parse_set, score  # noqa: E402  (benchmarks/ is this script's folder)

from carmask import models  # noqa: E402
from carmask.cli.models import describe_input  # noqa: E402
from carmask.data import build_cache, discover  # noqa: E402
from carmask.devices import pick_device  # noqa: E402
from carmask.files import atomic_write  # noqa: E402
from carmask.recipes import recipe  # noqa: E402
from carmask.train import train  # noqa: E402

RECIPES = "multiview-accurate,rgb-accurate"
STARTUP_S = 25  # a training run's own set-up: model, statistics, the cache onto the GPU
CACHE_S = 30  # building a later recipe's input cache
MARGIN_S = 15  # shipping the files, the table
EPOCH_OVERHEAD = 1.15  # validation and checkpoints each epoch, outside the training budget
SHIP_LIMIT = 16 * 2**20


def log(message: str) -> None:
    print(f"[{time.monotonic() - START:6.1f}s] {message}", flush=True)


def check_parts(parts: list[Path], complete: bool = True) -> dict:
    """Every packed file present with its size; `complete`: all parts of the set.
    Exits with a sentence on the first problem (a part missing: the machine was
    given back between the calls, or a call carried the wrong folder)."""
    manifests = []
    for part in parts:
        path = part / "manifest.json"
        if not path.exists():
            sys.exit(
                f"missing {path}: carry {part} (pack it with benchmarks/pack_for_device.py); a part "
                f"from an earlier call is gone if the machine was given back between the calls"
            )
        manifest = json.loads(path.read_text())
        wrong = [
            name
            for name, size in manifest["files"].items()
            if not (part / name).is_file() or (part / name).stat().st_size != size
        ]
        if wrong:
            sys.exit(
                f"{part}: {len(wrong)} of its {len(manifest['files'])} files are missing or truncated, e.g. {wrong[0]}"
            )
        manifests.append(manifest)
    numbers = sorted(m["part"] for m in manifests)
    if complete and numbers != list(range(1, manifests[0]["parts"] + 1)):
        sys.exit(f"parts {numbers} given, the set has {manifests[0]['parts']}: give them all")
    files = sum(len(m["files"]) for m in manifests)
    log(
        f"parts {numbers} of {manifests[0]['parts']} present: {files} files, "
        f"{sum(len(m['cars']) for m in manifests)} cars"
    )
    return {"split": manifests[0]["split"], "files": files}


def join(parts: list[Path], root: Path) -> Path:
    """One Kaggle-layout folder of links to the parts' files."""
    for part in parts:
        for name in json.loads((part / "manifest.json").read_text())["files"]:
            link = root / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to((part / name).resolve())
    return root


def machine(device: str) -> str:
    if device != "cpu" and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        return f"{torch.cuda.get_device_name()} ({total / 2**30:.0f} GiB)"
    return f"CPU ({os.cpu_count()} cores)"


def score_job(checkpoint: str, train_dir: str, full_masks: str, val_cars, full_cars, device: str) -> dict:
    """The held-out figures of a checkpoint (in its own process)."""
    t0 = time.perf_counter()
    row = score(checkpoint, Path(train_dir), Path(full_masks), val_cars, full_cars, device)
    return {**row, "score_s": round(time.perf_counter() - t0, 1)}


def epochs_of(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def cli_flags(overrides: dict) -> str:
    """`--set` overrides as `carmask train` flags, for the card's command."""
    flags = []
    for key, value in overrides.items():
        flag = "--inputs" if key == "channels" else "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, tuple):
            flags.append(f"{flag} {','.join(value) if key == 'channels' else 'x'.join(map(str, value))}")
        else:
            flags.append(f"{flag} {value}")
    return "".join(f" {f}" for f in flags)


def model_card(name: str, result: dict, meta: dict, spec, size: int) -> str:
    config, figures = meta["config"], result["figures"]
    parameters = result["parameters"] / 1e6
    kind = "multi-view" if spec.needs_views else "single-photo"
    needs = "Needs a set of at least 3 views of the car." if spec.needs_views else "Works on single photos."
    gpu = " on the GPU, bf16, channels-last, the input cache in GPU memory" if "CPU" not in result["machine"] else ""
    full = (
        f"- **At 1918x1280** ({result['full_cars']} held-out car(s) with full-size masks): "
        f"{figures['1918']:.4f} ({figures['1918_tta']:.4f} with hflip TTA).\n"
        if result["full_cars"]
        else ""
    )
    return f"""# Model card: `{name}`

The accurate {kind} model: a U-Net (width {config["arch_kwargs"].get("width")}, depth \
{config["arch_kwargs"].get("depth")}, {parameters:.2f}M parameters, batch norm) on \
{"x".join(map(str, spec.size))} inputs, trained on one {result["machine"]}.

- **Recipe**: `{name}` (`carmask.recipes`). Command, on one GPU:
  `carmask train ../shared/data/carvana-512 -o runs/{name} --recipe {name} --max-minutes \
{result["budget_min"]:.2f}{result["flags"]}`
  (trained by `benchmarks/gpu_train.py`, the same recipe and split, with the
  ablation's held-out cars named as the validation cars).
- **Input**: {describe_input(spec)}. {needs} Normalisation statistics are stored inside.
- **Training data**: `carvana-512` (real Carvana photos), split by car:
  {meta["train_cars"]} cars ({meta["train_images"]} photos) for training, {meta["val_cars"]} held-out cars
  ({meta["val_images"]} photos) for validation (they pick the best epoch).
- **Training**: BCE + soft dice (weight {config["dice_weight"]}), extra BCE weight {config["edge_weight"]} near the
  car's edge, AdamW lr {config["lr"]:g}, weight decay {config["weight_decay"]:g}, warm-up and cosine decay over
  a {result["budget_min"]:.2f}-minute budget, batch {config["batch_size"]}, flips / shift / scale / rotation / colour
  jitter{gpu}; {result["epochs_run"]} epochs
  ({result["train_images_per_s"]:.0f} training photos/s), the best by validation dice (epoch \
{meta["epochs"]}) is the one shipped.
- **Held-out dice** ({result["val_cars"]} cars, masks at 512x512): {figures["512"]:.4f} ({figures["512_tta"]:.4f}
  with hflip TTA); working-size validation dice {meta["val_dice"]:.4f}.
{full}- **Machine**: {result["machine"]}, torch {torch.__version__}, {datetime.date.today()}.
- **Size**: {size / 2**20:.1f} MiB, weights in half precision (computed in float32).
  CPU time per photo: `carmask models`.
"""


def write_results(out: Path, results: dict) -> None:
    text = json.dumps(results, indent=1, default=str)
    atomic_write(out / "results.json", lambda tmp: tmp.write_text(text))


def ship(name: str, run: Path, out: Path, result: dict) -> None:
    """The best epoch in half precision; once it is scored (`result["figures"]`),
    again with its figures, with its card and its catalog entry."""
    net, meta = models.load(run / "best.pt")
    extra = {"recipe": name, "trained_on": result["machine"]}
    figures = result.get("figures")
    if figures:
        extra.update(
            {
                "dice_512": round(figures["512"], 5),
                "dice_512_hflip": round(figures["512_tta"], 5),
                "dice_1918": round(figures["1918"], 5),
                "dice_1918_hflip": round(figures["1918_tta"], 5),
            }
        )
    models.save(net, out / f"{name}.pt", {**meta, **extra}, half=True)
    size = (out / f"{name}.pt").stat().st_size
    if size > SHIP_LIMIT:
        log(f"warning: {name}.pt is {size / 2**20:.1f} MiB, over the 16 MiB a shipped file may take")
    result["file_mib"] = round(size / 2**20, 2)
    if figures:
        result["catalog"] = {k: v for k, v in extra.items() if k != "trained_on"}
        card = model_card(name, result, meta, net.spec, size)
        atomic_write(out / f"{name}.md", lambda tmp: tmp.write_text(card))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=Path, nargs="+", default=[Path(".device/part1"), Path(".device/part2")])
    parser.add_argument("--check", action="store_true", help="only check the given parts and the machine")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "runs/gpu"))
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(".device/work"),
        help="joined data, caches (about 25 GB at 512x512), runs; ignored by git",
    )
    parser.add_argument("--recipes", default=RECIPES, help="in order of priority")
    parser.add_argument("--deadline", type=float, default=9.2, help="minutes for the whole run")
    parser.add_argument(
        "--share", type=float, default=0.75, help="the first recipe's share of the training time, when another follows"
    )
    parser.add_argument("--score-reserve", type=float, default=75.0, help="seconds kept to score a model")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change a field of every recipe (a dry run: width=4, size=64x64, ...)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, help="processes building each input cache (default: one per core)")
    args = parser.parse_args()
    deadline = 60 * args.deadline

    def left() -> float:
        return deadline - (time.monotonic() - START)

    packed = check_parts(args.parts, complete=not args.check)
    args.work.mkdir(parents=True, exist_ok=True)
    log(
        f"machine: {machine(args.device)}, torch {torch.__version__}, "
        f"{shutil.disk_usage(args.work).free / 2**30:.0f} GiB free for {args.work}"
    )
    if args.check:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    root = join(args.parts, args.work / "data")
    train_dir, full_masks = root / "carvana-512", root / "carvana-1918-masks" / "train_masks"
    (args.work / "split.json").write_text(json.dumps(packed["split"]))
    val_cars, full_cars = held_out_cars(train_dir, full_masks, args.work / "split.json")
    cars = discover(train_dir)
    device = pick_device(args.device)  # on a GPU the input caches are built there, in this process
    names = args.recipes.split(",")
    overrides = parse_set(args.set)
    results = {
        "machine": machine(args.device),
        "torch": torch.__version__,
        "started": str(datetime.datetime.now()),
        "deadline_min": args.deadline,
        "cars": {"train": len(cars) - len(val_cars), "val": len(val_cars), "full_size_val": len(full_cars)},
        "models": {},
    }
    lock = threading.Lock()

    def scored(name: str, future: Future) -> None:
        """Ship a model again with its figures and card as soon as its scoring ends
        (in the pool's thread, while the next recipe may be training)."""
        with lock:
            try:
                result = results["models"][name]
                result["figures"] = future.result()
                ship(name, args.work / "runs" / name, args.out, result)
                write_results(args.out, results)
                log(
                    f"{name}: scored in {result['figures']['score_s']:.0f}s, dice {result['figures']['512']:.4f} "
                    f"at 512; wrote {name}.pt ({result['file_mib']} MiB) and {name}.md"
                )
            except Exception as exc:  # noqa: BLE001  (report it; the other model goes on)
                log(f"{name}: scoring failed: {exc!r}")

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as scorer:
        for i, name in enumerate(names):
            config = recipe(name, val_cars=val_cars, **overrides)
            t0 = time.monotonic()
            build_cache(cars, config.spec, args.work / "cache", workers=args.workers, device=device)
            cache_s = time.monotonic() - t0
            later = len(names) - i - 1  # recipes still to come: each needs a cache and a start
            fixed = STARTUP_S * (1 + later) + CACHE_S * later + args.score_reserve + MARGIN_S
            budget = (left() - fixed) / EPOCH_OVERHEAD * (args.share if later else 1.0)
            log(f"{name}: cache ready in {cache_s:.0f}s; training budget {budget / 60:.2f} min")
            if budget < 45:
                log(f"{name}: skipped, {left():.0f}s left")
                continue
            config.max_minutes = budget / 60
            run = args.work / "runs" / name
            t0 = time.monotonic()
            train(
                train_dir,
                run,
                config,
                device=args.device,
                cache_dir=args.work / "cache",
                progress=False,
                workers=args.workers,
            )
            train_wall = time.monotonic() - t0
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the cache leaves GPU memory for the scorer and the next recipe
            epochs = epochs_of(run)
            meta = torch.load(run / "best.pt", weights_only=True)["meta"]
            trained_s = float(epochs[-1]["seconds"])
            result = {
                "recipe": name,
                "machine": results["machine"],
                "budget_min": round(config.max_minutes, 3),
                "cache_s": round(cache_s, 1),
                "train_wall_s": round(train_wall, 1),
                "epochs_run": len(epochs),
                "best_epoch": meta["epochs"],
                "val_dice": meta["val_dice"],
                "train_images_per_s": round(len(epochs) * meta["train_images"] / max(trained_s, 1e-9), 1),
                "parameters": sum(p.numel() for p in models.load(run / "best.pt")[0].parameters()),
                "val_cars": len(val_cars),
                "full_cars": len(full_cars),
                "flags": cli_flags(overrides),
                "epochs": epochs,
            }
            log(
                f"{name}: {len(epochs)} epochs in {trained_s:.0f}s of training ({train_wall:.0f}s wall), "
                f"{result['train_images_per_s']:.0f} photos/s, best validation dice {meta['val_dice']:.4f} "
                f"at epoch {meta['epochs']}"
            )
            with lock:  # the weights leave at once: a run cut short still returns them
                results["models"][name] = result
                ship(name, run, args.out, result)
                write_results(args.out, results)
            future = scorer.submit(
                score_job, str(run / "best.pt"), str(train_dir), str(full_masks), val_cars, full_cars, args.device
            )
            future.add_done_callback(lambda done, name=name: scored(name, done))
    # Leaving the pool waited for the scoring and its callbacks (`scored` logged any failure).
    results["catalog"] = {name: r["catalog"] for name, r in results["models"].items() if "catalog" in r}
    results["total_s"] = round(time.monotonic() - START, 1)
    write_results(args.out, results)
    print(
        f"\nHeld-out cars: {len(val_cars)} at 512x512; {len(full_cars)} with 1918x1280 masks. "
        f"{results['machine']}, {results['total_s']:.0f}s in all."
    )
    print("| model | dice 512 | +hflip | dice 1918 | +hflip | epochs (best) | training | photos/s | file |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results["models"].items():
        f = r.get("figures", {})
        print(
            f"| {name} | {f.get('512', float('nan')):.4f} | {f.get('512_tta', float('nan')):.4f} "
            f"| {f.get('1918', float('nan')):.4f} | {f.get('1918_tta', float('nan')):.4f} "
            f"| {r['epochs_run']} ({r['best_epoch']}) | {r['budget_min']:.2f} min | {r['train_images_per_s']:.0f} "
            f"| {r.get('file_mib', '-')} MiB |"
        )


if __name__ == "__main__":
    main()

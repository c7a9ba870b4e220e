"""Prediction speed, from JPEG files on disk to the submission CSV on disk.

Three measurements with the shipped default models (or `--model`):

1. End to end, in a child process of its own: every photo of the folder
   predicted and written as `carmask predict` does (`Predictor.predict_sets`
   into a `SubmissionWriter`), start-up included; photos/s, the child's peak
   memory (and peak GPU memory). `--baseline REF` runs the same in the
   carmask of another commit (a temporary git worktree), in the same run, so
   the two compare on one machine in one state (`--rounds N`: alternately,
   N times, the median ratio). `--nvjpeg both` runs this
   carmask with and without GPU decoding.
2. A breakdown by stage, from the predictor's own timers
   (`Predictor(profile=True)`: the device is synchronised after each stage,
   so they do not overlap): decode (the workers' time, summed), inputs
   (frames, backgrounds, crop and resize), model, postprocess (holes, resize
   into the boxes, threshold, run-boundary flags), copy back, then encode
   (RLE text) and write (CSV). One untimed set first warms up.
3. A single photo cut out (decode, predict, compose), warm: median latency.

    python benchmarks/predict_speed.py ../shared/data/carvana-test-1918/test --baseline c30c025 --rounds 3
    python benchmarks/predict_speed.py DIR --device cuda --batch-size 64 --repeat 30 --nvjpeg both --json out.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from carmask import cutout
from carmask.io import find_photos, read_photo

try:
    from carmask.kaggle import group_by_car
except ImportError:  # a baseline before carmask.kaggle (--baseline runs this script in its carmask)
    from carmask.io import group_by_car
from carmask.predict import Predictor
from carmask.rle import encode_boundaries

NVJPEG = {"auto": "auto", "on": True, "off": False}


def repeated(photo_dir: Path, times: int, into: Path) -> Path:
    """A folder that holds every photo `times` times (links, as new cars), so a
    small folder that travels to a GPU machine still makes a run long enough
    to time."""
    into.mkdir()
    photos = find_photos([photo_dir])
    for k in range(times):
        for photo in photos:
            (into / f"r{k:03d}{photo.name}").symlink_to(photo.absolute())
    return into


def child_run(
    photo_dir: Path, out: Path, device: str, batch_size: int, model, compile: bool, nvjpeg, refiner=None
) -> dict:
    """What `carmask predict PHOTO_DIR -o OUT` does, timed from inside: the
    predictor's rows into the submission writer. Runs in the child process;
    keeps to the API that the baseline commits share."""
    import inspect

    from carmask.submission import SubmissionWriter

    start = time.perf_counter()
    # as `carmask predict`: the stored pixel grid; options an older commit lacks are left out
    known = inspect.signature(Predictor).parameters
    options = {"upright": False, "nvjpeg": NVJPEG[nvjpeg], **({"refiner": refiner} if refiner else {})}
    options = {k: v for k, v in options.items() if k in known}
    predictor = Predictor(model, device=device, batch_size=batch_size, compile=compile, **options)
    writer = SubmissionWriter(out, overwrite=True)
    sets = group_by_car(find_photos([photo_dir]))
    ready = last = time.perf_counter()
    photos = 0
    for prediction in predictor.predict_sets(sets, encode=True):
        photos += 1
        if not prediction.error:
            writer.write(prediction.path.name, prediction.runs)
        if time.perf_counter() - last > 2:  # progress, for a run stopped by the time limit
            last = time.perf_counter()
            print(json.dumps({"photos": photos, "predicting_s": round(last - ready, 2)}), flush=True)
    writer.finish()
    done = time.perf_counter()
    figures = {
        "photos": photos,
        "predicting_s": round(done - ready, 2),
        "start_s": round(ready - start, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if predictor.device.type == "cuda":
        figures["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        figures["nvjpeg"] = getattr(getattr(predictor, "decoder", None), "uses_nvjpeg", False)
    return figures


def end_to_end(photo_dir: Path, args, nvjpeg="auto", src: Path | None = None) -> dict:
    """A child process predicts the folder (`src`: import carmask from there).
    Past `args.time_limit` seconds it is stopped, and the rows it wrote count."""
    env = {**os.environ, **({"PYTHONPATH": str(src)} if src else {})}
    with tempfile.TemporaryDirectory() as tmp:
        if args.repeat > 1:
            photo_dir = repeated(photo_dir, args.repeat, Path(tmp, "photos"))
        command = [
            sys.executable,
            __file__,
            "--child",
            str(photo_dir),
            f"{tmp}/sub.csv",
            "--device",
            args.device,
            "--batch-size",
            str(args.batch_size),
            "--nvjpeg",
            nvjpeg,
        ]
        command += ["--model", args.model] if args.model else []
        command += ["--compile"] if args.compile else []
        command += ["--refiner", args.refiner] if args.refiner and not src else []
        start = time.perf_counter()
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            output, errors = child.communicate(timeout=args.time_limit)
            stopped = False
        except subprocess.TimeoutExpired:
            child.kill()
            output, errors = child.communicate()
            stopped = True
        seconds = time.perf_counter() - start
        if child.returncode and not stopped:
            raise RuntimeError(f"the prediction run failed: {' '.join(command)}\n{errors[-2000:]}")
        rows = 0 if stopped else sum(1 for _ in open(f"{tmp}/sub.csv")) - 1
    lines = output.strip().splitlines()
    inner = json.loads(lines[-1]) if lines else {"photos": 0, "predicting_s": 0}
    if stopped:  # the child's last progress line
        return {
            "photos": inner["photos"],
            "seconds": round(seconds, 2),
            "stopped_after_s": args.time_limit,
            "photos_per_s": round(inner["photos"] / seconds, 1),
            "predicting_photos_per_s": round(inner["photos"] / max(inner["predicting_s"], 1e-9), 1),
        }
    return {
        "photos": rows,
        "seconds": round(seconds, 2),
        "photos_per_s": round(rows / seconds, 1),
        "predicting_photos_per_s": round(rows / inner["predicting_s"], 1),
        **inner,
    }


def breakdown(photo_sets, args, nvjpeg="auto") -> dict:
    """Seconds per stage over the sets, from the predictor's own timers."""
    predictor = Predictor(
        args.model,
        device=args.device,
        batch_size=args.batch_size,
        compile=args.compile,
        upright=False,
        nvjpeg=NVJPEG[nvjpeg],
        profile=True,
        **refiner_option(args),
    )
    list(predictor.predict_sets(photo_sets[:1], encode=True))  # warm-up: model load, compilation, kernels
    predictor.stage_seconds = dict.fromkeys(predictor.stage_seconds, 0.0)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds, sink, photos = predictor.stage_seconds, io.StringIO(), 0
    extra = {"encode": 0.0, "write": 0.0}
    for prediction in predictor.predict_sets(photo_sets, encode=True):
        photos += 1
        start = time.perf_counter()
        text = encode_boundaries(prediction.runs)
        middle = time.perf_counter()
        sink.write(f"{prediction.path.name},{text}\n")
        extra["encode"] += middle - start
        extra["write"] += time.perf_counter() - middle
    seconds = {**seconds, **extra}
    total = sum(seconds.values())
    figures = {
        "photos": photos,
        "nvjpeg": predictor.decoder.uses_nvjpeg,
        "stages": {
            s: {"seconds": round(v, 3), "ms_per_photo": round(1000 * v / photos, 2), "share": round(v / total, 3)}
            for s, v in seconds.items()
        },
        "sum_photos_per_s": round(photos / total, 1),
    }
    if predictor.device.type == "cuda":
        figures["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return figures


def single_cutout(path: Path, predictor: Predictor, repeats: int = 10) -> dict:
    """Median seconds to cut out one photo (decode, predict, compose), warm."""
    cutout.remove(path, predictor)  # warm-up: load the model, first allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        cutout.remove(path, predictor)
        times.append(time.perf_counter() - start)
    height, width = read_photo(path).shape[:2]
    return {"photo": f"{width}x{height}", "median_s": round(float(np.median(times)), 3), "min_s": round(min(times), 3)}


def refiner_option(args) -> dict:
    """`refiner=` for this commit's Predictor, when --refiner names one."""
    return {"refiner": args.refiner} if args.refiner else {}


def machine(device: torch.device) -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photo_dir", type=Path, nargs="?", default=Path("../shared/data/carvana-test-1918/test"))
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--model", help="default: the shipped models (multiview for sets, rgb for single photos)")
    p.add_argument(
        "--refiner", help="this commit's edge refiner: a name, a checkpoint or none (default: its default, auto)"
    )
    p.add_argument("--breakdown-sets", type=int, default=10, help="car sets timed stage by stage (0: none)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --baseline: run the two this many times, "
        "alternately, and give the median ratio (this machine is shared and noisy)",
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA graphs on a GPU)")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="predict every photo this many times end to end (as new cars): a longer run from a small folder",
    )
    p.add_argument(
        "--baseline",
        metavar="REF",
        help="also run the carmask of this commit end to end (a temporary git worktree), in the same run",
    )
    p.add_argument(
        "--nvjpeg",
        default="auto",
        choices=["auto", "on", "off", "both"],
        help="decode JPEGs on the GPU (torchvision); both: a run with and one without",
    )
    p.add_argument("--no-cutout", action="store_true", help="skip the single cut-out latency")
    p.add_argument(
        "--time-limit",
        type=float,
        default=3600,
        help="seconds after which an end-to-end run is stopped (its rows so far count)",
    )
    p.add_argument("--child", nargs=2, metavar=("PHOTO_DIR", "OUT"), help=argparse.SUPPRESS)
    return p


def measure(args) -> dict:
    """Every figure for `args`, as a dict (see the module's docstring)."""
    device = Predictor(device=args.device).device
    sets = group_by_car(find_photos([args.photo_dir]))
    variants = ["on", "off"] if args.nvjpeg == "both" else [args.nvjpeg]
    figures = {
        "machine": machine(device),
        "settings": {
            "batch_size": args.batch_size,
            "repeat": args.repeat,
            "model": args.model or "shipped defaults",
            "refiner": args.refiner or "auto",
        },
    }
    if args.baseline:
        from baseline import describe, worktree  # beside this script

        with worktree(args.baseline) as src:
            rounds = [
                (
                    {"ref": describe(args.baseline), **end_to_end(args.photo_dir, args, src=src)},
                    {v: end_to_end(args.photo_dir, args, v) for v in variants},
                )
                for _ in range(args.rounds)
            ]
        figures["rounds"] = [{"baseline": b, "end_to_end": e} for b, e in rounds]
        figures["baseline"], figures["end_to_end"] = rounds[-1]
    else:
        figures["end_to_end"] = {v: end_to_end(args.photo_dir, args, v) for v in variants}
    if args.breakdown_sets:
        figures["breakdown"] = {v: breakdown(sets[: args.breakdown_sets], args, v) for v in variants}
    if not args.no_cutout:
        predictor = Predictor(args.model, device=args.device, **refiner_option(args))
        figures["single_cutout"] = single_cutout(sets[0].paths[0], predictor)
    return figures


def main() -> None:
    args = parser().parse_args()
    if args.child:
        print(
            json.dumps(
                child_run(
                    Path(args.child[0]),
                    Path(args.child[1]),
                    args.device,
                    args.batch_size,
                    args.model,
                    args.compile,
                    args.nvjpeg,
                    args.refiner,
                )
            )
        )
        return
    figures = measure(args)
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


def report(figures: dict) -> None:
    machine, parts = figures["machine"], figures.get("breakdown", {})
    print(f"machine: {machine['cores']} cores, {machine['device']}, torch {machine['torch']}")
    runs = [(f"this commit, nvjpeg {v}", e) for v, e in figures["end_to_end"].items()]
    if "baseline" in figures:
        runs.append((f"baseline {figures['baseline']['ref'][:60]}", figures["baseline"]))
    print("\nend to end (JPEG files to the CSV, a child process, start-up included):")
    print("| run | photos | seconds | photos/s | photos/s predicting | peak RSS MiB | peak GPU MiB |")
    print("|---|---|---|---|---|---|---|")
    for name, e in runs:
        print(
            f"| {name} | {e['photos']} | {e['seconds']} | {e['photos_per_s']} "
            f"| {e['predicting_photos_per_s']}{' (stopped)' if 'stopped_after_s' in e else ''} "
            f"| {e.get('peak_rss_mib', '-')} "
            f"| {e.get('peak_gpu_mib', '-')} |"
        )
    for v in figures["end_to_end"] if "baseline" in figures else ():
        ratios = [r["end_to_end"][v]["photos_per_s"] / r["baseline"]["photos_per_s"] for r in figures["rounds"]]
        each = (
            f" (rounds: {', '.join(f'{r:.2f}x' for r in ratios)}; the table shows the last)" if len(ratios) > 1 else ""
        )
        print(f"this commit (nvjpeg {v}) / baseline: {float(np.median(ratios)):.2f}x{each}")
    for v, part in parts.items():
        print(
            f"\nbreakdown over {part['photos']} photos (nvjpeg {v}: {'used' if part['nvjpeg'] else 'not used'}), "
            f"stages one after another, ms per photo:"
        )
        print("| " + " | ".join(part["stages"]) + " | sum |")
        print("|" + "---|" * (len(part["stages"]) + 1))
        print(
            "| "
            + " | ".join(str(row["ms_per_photo"]) for row in part["stages"].values())
            + f" | {1000 / part['sum_photos_per_s']:.1f} ({part['sum_photos_per_s']} photos/s) |"
        )
        if "peak_gpu_mib" in part:
            print(f"peak GPU memory: {part['peak_gpu_mib']} MiB")
    if "single_cutout" in figures:
        single = figures["single_cutout"]
        print(f"\nsingle {single['photo']} cut-out, warm: median {single['median_s']} s (best {single['min_s']} s)")


if __name__ == "__main__":
    main()

"""Prediction speed, from JPEG files on disk to the submission CSV on disk.

Three measurements with the shipped default models (or `--model`):

1. End to end: `carmask predict` in a child process, as a user runs it:
   photos/s over the whole folder and the child's peak memory.
2. A breakdown by stage, each timed on its own, one car's set at a time and
   without overlap: decode, background (median/mean and differences), model,
   postprocess (fill holes, resize to full size, threshold, run boundaries),
   encode (RLE text) and write (CSV). The end-to-end run overlaps decoding
   with the rest, so its time is less than the sum. One untimed set first
   warms up (model load, compilation, GPU kernels).
3. A single photo cut out (decode, predict, compose), warm: median latency.

    python benchmarks/predict_speed.py ../shared/data/carvana-test-1918/test
    python benchmarks/predict_speed.py DIR --device cuda --batch-size 64 --repeat 30 --json out.json
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
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from carmask import cutout
from carmask.io import find_photos, group_by_car, read_frame, read_photo
from carmask.postprocess import full_size
from carmask.predict import Predictor, boundaries
from carmask.rle import encode_boundaries

STAGES = ("decode", "background", "model", "postprocess", "encode", "write")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


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


def end_to_end(photo_dir: Path, args) -> dict:
    """`carmask predict` as a user runs it, in a child process of its own."""
    with tempfile.TemporaryDirectory() as tmp:
        if args.repeat > 1:
            photo_dir = repeated(photo_dir, args.repeat, Path(tmp, "photos"))
        command = [sys.executable, "-c", "from carmask.cli import main; main()", "predict", str(photo_dir), "-o", f"{tmp}/sub.csv",
                   "--device", args.device, "--batch-size", str(args.batch_size)]
        if args.model:
            command += ["--model", args.model]
        if args.compile:
            command += ["--compile"]
        start = time.perf_counter()
        subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        rows = sum(1 for _ in open(f"{tmp}/sub.csv")) - 1
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"photos": rows, "seconds": round(seconds, 2), "photos_per_s": round(rows / seconds, 1),
            "peak_rss_mib": round(peak_mib)}


def breakdown(photo_sets, predictor: Predictor) -> dict:
    """Seconds per stage over the sets, each stage timed on its own."""
    seconds, device = defaultdict(float), predictor.device
    sink = io.StringIO()

    def timed(stage, work):
        sync(device)
        start = time.perf_counter()
        result = work()
        sync(device)
        seconds[stage] += time.perf_counter() - start
        return result

    def one_set(photo_set) -> int:
        frame = predictor.model_for(len(photo_set.paths)).spec.frame
        loaded = timed("decode", lambda: [read_frame(p, frame) for p in photo_set.paths])
        frames, sizes = np.stack([f for f, _ in loaded]), [s for _, s in loaded]
        model, inputs, boxes = timed("background", lambda: predictor._inputs(frames))
        probs = timed("model", lambda: predictor._probabilities(model, inputs))
        runs = timed("postprocess", lambda: boundaries(full_size(probs, boxes, frame, sizes)))
        texts = timed("encode", lambda: [encode_boundaries(r) for r in runs])
        timed("write", lambda: [sink.write(f"{p.name},{t}\n") for p, t in zip(photo_set.paths, texts)])
        return len(photo_set.paths)

    one_set(photo_sets[0])  # warm-up, untimed: model load, compilation, GPU kernels
    seconds.clear()
    photos = sum(one_set(s) for s in photo_sets)
    total = sum(seconds.values())
    return {"photos": photos,
            "stages": {s: {"seconds": round(seconds[s], 3), "ms_per_photo": round(1000 * seconds[s] / photos, 2),
                           "share": round(seconds[s] / total, 3)} for s in STAGES},
            "sum_photos_per_s": round(photos / total, 1)}


def single_cutout(path: Path, predictor: Predictor, repeats: int = 10) -> dict:
    """Median seconds to cut out one photo (decode, predict, compose), warm."""
    cutout.remove(path, predictor)  # warm-up: load the model, first allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        cutout.remove(path, predictor)
        times.append(time.perf_counter() - start)
    height, width = read_photo(path).shape[:2]
    return {"photo": f"{width}x{height}", "median_s": round(float(np.median(times)), 3),
            "min_s": round(min(times), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photo_dir", type=Path, nargs="?", default=Path("../shared/data/carvana-test-1918/test"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", help="default: the shipped models (multiview for sets, rgb for single photos)")
    parser.add_argument("--breakdown-sets", type=int, default=10, help="car sets timed stage by stage")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA graphs on a GPU)")
    parser.add_argument("--repeat", type=int, default=1, help="predict every photo this many times end to end "
                                                              "(as new cars): a longer run from a small folder")
    args = parser.parse_args()

    predictor = Predictor(args.model, device=args.device, batch_size=args.batch_size, compile=args.compile)
    sets = group_by_car(find_photos([args.photo_dir]))
    device = predictor.device
    figures = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                           "torch": torch.__version__},
               "end_to_end": end_to_end(args.photo_dir, args)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    figures["breakdown"] = breakdown(sets[:args.breakdown_sets], predictor)
    if device.type == "cuda":
        figures["breakdown"]["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    single = Predictor(args.model, device=args.device)
    figures["single_cutout"] = single_cutout(sets[0].paths[0], single)
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


def report(figures: dict) -> None:
    machine, e2e, parts = figures["machine"], figures["end_to_end"], figures["breakdown"]
    print(f"machine: {machine['cores']} cores, {machine['device']}, torch {machine['torch']}")
    print(f"end to end: {e2e['photos']} photos in {e2e['seconds']} s = {e2e['photos_per_s']} photos/s, "
          f"peak memory {e2e['peak_rss_mib']} MiB")
    print(f"\nbreakdown over {parts['photos']} photos, stages one after another:")
    print("| stage | ms/photo | share |\n|---|---|---|")
    for stage, row in parts["stages"].items():
        print(f"| {stage} | {row['ms_per_photo']} | {100 * row['share']:.0f}% |")
    print(f"sum: {parts['sum_photos_per_s']} photos/s without overlap")
    if "peak_gpu_mib" in parts:
        print(f"peak GPU memory: {parts['peak_gpu_mib']} MiB")
    single = figures["single_cutout"]
    print(f"\nsingle {single['photo']} cut-out, warm: median {single['median_s']} s (best {single['min_s']} s)")


if __name__ == "__main__":
    main()

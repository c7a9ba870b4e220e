"""The whole GPU speed measurement in one run of a few minutes.

From JPEG files to the submission CSV on one GPU: >= 9,600 photos of
1918x1280 end to end (a small folder predicted `--repeat` times over, as new
cars), with and without nvjpeg decoding, the per-stage breakdown, peak GPU
memory and a single cut-out's latency; first, the Pillow decoding path alone
in 1, 4, 8 and 16 threads (where the end-to-end run's CPU decoding went 10
times slower per photo than on a 2-core CPU). The figures go to `$OUT/gpu_speed.json`
(or `--json`) after each step, so a run stopped by its time limit still
leaves what it measured; a short table is printed last.

Here, before the device call (the folder must stay out of git: .device/ is in
.git/info/exclude), copy 20 test cars (320 photos, ~31 MiB, under the 64 MiB
a device call carries):

    python benchmarks/gpu_speed.py --prepare

On the GPU machine (torch with CUDA, torchvision for nvjpeg, no network), in
the repository root, carrying .device:

    PYTHONPATH=src python benchmarks/gpu_speed.py

`--compile-run` adds an end-to-end run with `torch.compile` (CUDA graphs);
`--architectures multiview-accurate,rgb-accurate` adds one for each recipe's
network with untrained weights (its speed does not depend on their values), so
the GPU speed of a model is known before it is trained.

A dry run on the CPU with tiny sizes checks the script end to end:

    python benchmarks/gpu_speed.py --device cpu --cars 2 --repeat 2 --batch-size 16 --nvjpeg off
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import predict_speed  # noqa: E402  (beside this script)

from carmask.io import find_photos  # noqa: E402
from carmask.kaggle import group_by_car  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / ".device" / "test"


def prepare(source: Path, cars: int) -> None:
    """Copy the first `cars` cars of `source` into .device/test."""
    ignored = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", str(FOLDER / "x.jpg")]).returncode == 0
    if not ignored:
        raise SystemExit("add /.device/ to .git/info/exclude first: the data must never be committed")
    sets = group_by_car(find_photos([source]))[:cars]
    if FOLDER.exists():
        shutil.rmtree(FOLDER)
    FOLDER.mkdir(parents=True)
    for photo in (p for s in sets for p in s.paths):
        shutil.copy2(photo, FOLDER / photo.name)
    size = sum(p.stat().st_size for p in FOLDER.iterdir())
    print(f"{FOLDER}: {len(sets)} cars, {sum(len(s.paths) for s in sets)} photos, {size / 2**20:.1f} MiB")


def decoding(paths: list[Path], device, workers: int) -> dict:
    """Pillow's decoding alone in `workers` threads, twice: as the predictor's
    decoder does it on `device` (the photo copied into pinned memory, then
    onto the GPU), and bare (`read_photo`: the array Pillow gives). Photos/s,
    and ms a photo summed over the threads: how it scales, what the copies add."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from carmask.inputs.decode import Decoder, Source
    from carmask.io import read_photo

    out, warm = {}, paths[: max(8, workers)]  # threads started, files cached, Pillow's blocks kept
    with Decoder(torch.device(device), workers, nvjpeg=False) as decoder:
        decoder.gather([decoder.submit(Source(p, p)) for p in warm])
        decoder.seconds, start = 0.0, time.perf_counter()
        decoder.gather([decoder.submit(Source(p, p)) for p in paths])
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        out["decoder"] = time.perf_counter() - start
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(read_photo, warm))
        start = time.perf_counter()
        list(pool.map(read_photo, paths))
        out["bare"] = time.perf_counter() - start
    return {
        **{f"{k}_photos_per_s": round(len(paths) / v, 1) for k, v in out.items()},
        "decoder_ms_per_photo_summed": round(1000 * decoder.seconds / len(paths), 2),
    }


def untrained(recipe_name: str, folder: Path) -> Path:
    """A checkpoint of `recipe_name`'s network with its initial weights, for timing."""
    from carmask import models
    from carmask.recipes import recipe

    config = recipe(recipe_name)
    path = folder / f"{recipe_name}-untrained.pt"
    models.save(models.Segmenter(config.arch, config.spec, config.arch_kwargs), path, {"untrained": True}, half=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", action="store_true", help="copy test cars into .device/test and stop")
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared/data/carvana-test-1918/test")
    parser.add_argument("--folder", type=Path, default=FOLDER)
    parser.add_argument("--cars", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=30, help="the folder this many times over, end to end")
    parser.add_argument("--nvjpeg", default="both", choices=["auto", "on", "off", "both"])
    parser.add_argument("--time-limit", type=float, default=150, help="seconds at most per end-to-end run")
    parser.add_argument("--compile-run", action="store_true", help="also end to end with --compile")
    parser.add_argument(
        "--architectures",
        default="",
        metavar="RECIPES",
        help="also end to end with these recipes' networks, untrained (comma-separated)",
    )
    parser.add_argument("--json", type=Path, help="default: $OUT/gpu_speed.json, else gpu_speed.json")
    args = parser.parse_args()
    if args.prepare:
        prepare(args.source, args.cars)
        return

    out = args.json or Path(os.environ.get("OUT", "."), "gpu_speed.json")
    sets = group_by_car(find_photos([args.folder]))[: args.cars]
    photos = sum(len(s.paths) for s in sets)
    folder = Path(tempfile.mkdtemp(prefix="gpu-speed-"))  # links to the chosen cars' photos
    for photo in (p for s in sets for p in s.paths):
        (folder / photo.name).symlink_to(photo.absolute())
    speed = predict_speed.parser().parse_args(
        [
            str(folder),
            "--device",
            args.device,
            "--batch-size",
            str(args.batch_size),
            "--repeat",
            str(args.repeat),
            "--nvjpeg",
            args.nvjpeg,
            "--breakdown-sets",
            str(len(sets)),
            "--time-limit",
            str(args.time_limit),
        ]
    )
    variants = ["on", "off"] if args.nvjpeg == "both" else [args.nvjpeg]
    started = time.perf_counter()
    from carmask.predict import Predictor

    device = Predictor(device=args.device).device
    figures = {
        "machine": predict_speed.machine(device),
        "settings": {"photos_in_folder": photos, "repeat": args.repeat, "batch_size": args.batch_size},
        "decoding": {},
        "end_to_end": {},
        "breakdown": {},
    }

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**figures, "seconds": round(time.perf_counter() - started, 1)}, indent=1))

    def run(kind: str, key: str, measure) -> None:
        """One measurement into figures[kind][key]; a failure is recorded and the rest go on."""
        try:
            figures[kind][key] = measure()
        except Exception as exc:
            figures[kind][key] = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1]}"}
        save()
        print(f"[{time.perf_counter() - started:.0f} s] {kind} {key}: {figures[kind][key]}", file=sys.stderr)

    paths = [p for s in sets for p in s.paths]
    for workers in sorted({1, 4, 8, 16, os.cpu_count() or 1}):
        run("decoding", f"{workers} threads", lambda: decoding(paths, device, workers))
    for v in variants:  # a failure in one variant (e.g. no torchvision) leaves the others
        run("breakdown", v, lambda: predict_speed.breakdown(sets, speed, v))
        run("end_to_end", v, lambda: predict_speed.end_to_end(folder, speed, v))
    if args.compile_run:  # compiling takes its own start-up: twice the time limit
        compiled = argparse.Namespace(**{**vars(speed), "compile": True, "time_limit": 2 * args.time_limit})
        run("end_to_end", "compile", lambda: predict_speed.end_to_end(folder, compiled, "auto"))
    for name in filter(None, args.architectures.split(",")):
        path = untrained(name, folder.parent)
        with_model = argparse.Namespace(**{**vars(speed), "model": str(path)})
        run("end_to_end", name, lambda: predict_speed.end_to_end(folder, with_model, "auto"))
    figures["single_cutout"] = predict_speed.single_cutout(sets[0].paths[0], Predictor(device=args.device))
    save()
    print(json.dumps(figures, indent=1))
    print(
        f"\n{figures['machine']['device']}, torch {figures['machine']['torch']}, "
        f"{photos} photos x {args.repeat}, batch {args.batch_size}; figures in {out}"
    )
    print("| nvjpeg | end to end photos/s | photos | predicting photos/s | peak GPU MiB | ms/photo by stage |")
    print("|---|---|---|---|---|---|")
    for v in variants:
        e, b = figures["end_to_end"].get(v, {}), figures["breakdown"].get(v, {})
        stages = " ".join(f"{k} {row['ms_per_photo']}" for k, row in b.get("stages", {}).items()) or b.get("error")
        print(
            f"| {v}{' (used)' if b.get('nvjpeg') else ''} | {e.get('photos_per_s', e.get('error'))} "
            f"| {e.get('photos', '-')} | {e.get('predicting_photos_per_s', '-')} "
            f"| {e.get('peak_gpu_mib', '-')} / {b.get('peak_gpu_mib', '-')} | {stages} |"
        )
    for key in [k for k in figures["end_to_end"] if k not in variants]:
        e = figures["end_to_end"][key]
        print(
            f"{key} (nvjpeg auto): {e.get('photos_per_s', e.get('error'))} photos/s end to end, "
            f"{e.get('predicting_photos_per_s', '-')} predicting, {e.get('photos', '-')} photos"
        )
    for key, d in figures["decoding"].items():
        print(
            f"decoding alone, {key}: {d.get('bare_photos_per_s', d.get('error'))} photos/s bare, "
            f"{d.get('decoder_photos_per_s', '-')} through the decoder "
            f"({d.get('decoder_ms_per_photo_summed', '-')} ms a photo summed over threads)"
        )
    print(f"single cut-out: median {figures['single_cutout']['median_s']} s")


if __name__ == "__main__":
    main()

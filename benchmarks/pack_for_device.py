"""Pack the real data for a GPU machine that takes 64 MiB per call, in parts.

Every car of carvana-512 (photos and masks: the training cars and the
ablation's held-out cars, which stay held out) and the 1918x1280 masks of the
held-out cars, in the Kaggle layout, shared out by car to `--parts` folders
that git ignores, each small enough to travel beside the checkout in one call.
The device keeps ignored files between calls while it stays warm, so the
first call carries part1 and the next, made at once, part2
(benchmarks/gpu_train.py joins them; docs/RESULTS.md gives the calls).

Lossless: JPEGs go through `jpegtran -copy all -optimize` where it is
installed (the same DCT coefficients, Huffman tables optimised: about 5%
smaller; every file is decoded and compared pixel by pixel), masks as they
are. Each part has a manifest.json: its files and sizes, and the split.

    echo /.device/ >> .git/info/exclude     # once: never commit the data
    python benchmarks/pack_for_device.py    # .device/part1, .device/part2
    python benchmarks/pack_for_device.py --out .device/dry --train-cars 8 --val-cars 2   # for a CPU dry run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from carmask.data import discover, split_by_car

CALL_LIMIT_MIB = 64.0


def checkout_bytes(repo: Path) -> int:
    """What travels with every call besides the carried folders: tracked files
    and untracked ones that git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    return sum(
        (repo / os.fsdecode(name)).stat().st_size for name in listed if name and (repo / os.fsdecode(name)).is_file()
    )


def copy_lossless(source: Path, target: Path, optimize: bool) -> int:
    """Copy a file; a JPEG through jpegtran when `optimize` and it is smaller
    with the very same pixels. Returns the bytes written."""
    if optimize and source.suffix.lower() in (".jpg", ".jpeg"):
        done = subprocess.run(
            ["jpegtran", "-copy", "all", "-optimize", "-outfile", str(target), str(source)], capture_output=True
        )
        if done.returncode == 0 and target.stat().st_size < source.stat().st_size:
            with Image.open(source) as a, Image.open(target) as b:
                if np.array_equal(np.asarray(a), np.asarray(b)):
                    shutil.copystat(source, target)
                    return target.stat().st_size
    shutil.copy2(source, target)
    return target.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path(".device"), help="parts go to OUT/part1, OUT/part2, ...")
    parser.add_argument("--parts", type=int, default=2)
    parser.add_argument(
        "--shares",
        help="each part's share of the bytes, e.g. 0.46,0.54 (default: equal), "
        "to leave room beside one part for other carried files",
    )
    parser.add_argument("--train-cars", type=int, help="only this many training cars (a dry run)")
    parser.add_argument("--val-cars", type=int, help="only this many held-out cars (a dry run)")
    parser.add_argument("--no-optimize", action="store_true", help="copy JPEGs as they are")
    args = parser.parse_args()

    repo = Path(__file__).resolve().parents[1]
    out = args.out.resolve()
    probe = out / "part1" / "probe"
    if subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=repo).returncode != 0:
        sys.exit(f"{args.out} is not ignored by git: add it to .git/info/exclude (never commit the data)")
    optimize = not args.no_optimize and shutil.which("jpegtran") is not None
    if not optimize and not args.no_optimize:
        print("jpegtran not found (apt-get install libjpeg-turbo-progs): JPEGs copied as they are")

    source = args.data / "carvana-512"
    full_masks = args.data / "carvana-1918-masks" / "train_masks"
    cars = discover(source)
    train_cars, val_cars = split_by_car(list(cars), 0.15, 0)  # the ablation's split, as in every recipe
    # A dry run's subset keeps a held-out car with full-size masks, to score at 1918x1280 too.
    with_full = {p.name.split("_")[0] for p in full_masks.glob("*_mask.gif")}
    val_cars = sorted(sorted(val_cars, key=lambda car: car not in with_full)[: args.val_cars])
    train_cars = train_cars[: args.train_cars]
    files = {car: [f for e in cars[car] for f in (e.photo, e.mask)] for car in train_cars + val_cars}
    for car in val_cars:  # full-size masks for scoring at 1918x1280
        files[car] += sorted(full_masks.glob(f"{car}_*"))
    # Whole cars to the part with the fewest bytes so far, largest cars first.
    sizes = {car: sum(f.stat().st_size for f in paths) for car, paths in files.items()}
    shares = [float(x) for x in args.shares.split(",")] if args.shares else [1.0] * args.parts
    if len(shares) != args.parts:
        sys.exit(f"--shares gives {len(shares)} shares for {args.parts} parts")
    parts: list[list[str]] = [[] for _ in range(args.parts)]
    for car in sorted(files, key=lambda c: (-sizes[c], c)):
        fill = [sum(sizes[c] for c in p) / share for p, share in zip(parts, shares)]
        parts[fill.index(min(fill))].append(car)

    checkout = checkout_bytes(repo)
    split = {"train": train_cars, "val": val_cars}
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for number, part_cars in enumerate(parts, start=1):
            folder = out / f"part{number}"
            shutil.rmtree(folder, ignore_errors=True)
            jobs = {}
            for car in sorted(part_cars):
                for f in files[car]:
                    target = folder / f.parent.relative_to(args.data) / f.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    jobs[target.relative_to(folder).as_posix()] = pool.submit(copy_lossless, f, target, optimize)
            written = {name: job.result() for name, job in sorted(jobs.items())}
            manifest = {
                "part": number,
                "parts": args.parts,
                "cars": sorted(part_cars),
                "split": split,
                "files": written,
            }
            (folder / "manifest.json").write_text(json.dumps(manifest, indent=0))
            total = sum(written.values()) + (folder / "manifest.json").stat().st_size
            call = total + checkout
            print(
                f"{folder}: {len(part_cars)} cars, {len(written)} files, {total / 2**20:.1f} MiB; "
                f"with the checkout ({checkout / 2**20:.1f} MiB) {call / 2**20:.1f} MiB "
                f"of the {CALL_LIMIT_MIB:.0f} MiB a call carries"
            )
            if call > CALL_LIMIT_MIB * 2**20:
                sys.exit(f"{folder} does not fit one call: pack into more --parts")
    original = sum(sizes.values())
    print(
        f"{len(train_cars)} training and {len(val_cars)} held-out cars in {args.parts} parts: "
        f"{original / 2**20:.1f} MiB as stored, packed losslessly"
    )


if __name__ == "__main__":
    main()

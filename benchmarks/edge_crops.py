"""Crops of cut-outs before and after the edge refinement, for looking at.

Each row is one place on a photo (a mirror, an antenna, a wheel arch, the
roof...): the photo, then the cut-out without refinement (the network's own
soft edge) and with it, over a checkerboard and over a dark colour (where a
halo of light studio shows). The photos are cut out with their car's other
views, as `carmask cutout` does.

Real photos (the default: test photos of carvana-test-1918) go to an ignored
folder and must never be committed; `--synthetic` makes the same picture from
a synthetic turntable set at 1918x1280 (crops placed from the car's outline),
which may go into docs:

    python benchmarks/edge_crops.py                                  # runs/edge-crops/real.png
    python benchmarks/edge_crops.py --crop 0004d4463b50_03:rear:1414:543
    python benchmarks/edge_crops.py --synthetic -o docs/edge-crops.png
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from carmask import Predictor
from carmask.cutout import compose
from carmask.io import find_photos
from carmask.kaggle import group_by_car

TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "carvana-test-1918" / "test"
# photo stem, what, centre x, y (full resolution)
REAL_CROPS = [
    ("015d98226195_01", "mirror", 1282, 462),
    ("015d98226195_01", "antenna", 592, 300),
    ("015d98226195_01", "wheel", 560, 1025),
    ("015d98226195_03", "behind the cab", 1380, 462),
    ("015d98226195_03", "wheel arch", 1400, 590),
    ("002b362dee46_03", "antenna", 1100, 390),
    ("002b362dee46_03", "roof", 880, 462),
    ("002b362dee46_03", "rear wheel arch", 1412, 680),
    ("0004d4463b50_03", "rear", 1414, 543),
    ("0004d4463b50_03", "front", 114, 700),
]
DARK = (24, 32, 64)


def checkerboard(height: int, width: int, cell: int = 8) -> np.ndarray:
    ys, xs = np.indices((height, width)) // cell
    return np.where(((ys + xs) % 2)[..., None] == 0, 255, 200).astype(np.uint8).repeat(3, axis=2)


def crop_row(photo, plain, refined, x: int, y: int, size: int, zoom: int) -> np.ndarray:
    """photo | before, after over the checkerboard | before, after over dark blue, one crop each."""
    height, width = photo.shape[:2]
    top, left = int(np.clip(y - size // 2, 0, height - size)), int(np.clip(x - size // 2, 0, width - size))
    part = np.s_[top : top + size, left : left + size]
    board = checkerboard(size, size)
    tiles = [photo[part]] + [
        compose(pieces.foreground[part], pieces.alpha[part], back)
        for back in (board, DARK)
        for pieces in (plain, refined)
    ]
    row = np.hstack([np.pad(t, ((0, 0), (0, 4), (0, 0)), constant_values=255) for t in tiles])
    return row.repeat(zoom, 0).repeat(zoom, 1)


def cutouts(predictor: Predictor, paths: list[Path], wanted: Path):
    """The plain and the refined cut-out pieces of `wanted`, predicted with its car's views."""
    items = [(str(p), p) for p in paths]
    index = paths.index(wanted)
    return [predictor.predict_views(items, cutout=kind)[index] for kind in ("plain", "refined")]


def outline_crops(alpha: np.ndarray) -> list[tuple[str, int, int]]:
    """Crop centres from a car's outline: roof, front, rear, and the lowest points left and right (wheels)."""
    ys, xs = np.nonzero(alpha > 127)
    middle = (xs.min() + xs.max()) // 2
    left, right = xs < middle, xs >= middle
    pick = lambda name, i: (name, int(xs[i]), int(ys[i]))  # noqa: E731
    return [
        pick("roof", ys.argmin()),
        pick("front", xs.argmin()),
        pick("rear", xs.argmax()),
        pick("wheel, left", np.flatnonzero(left)[ys[left].argmax()]),
        pick("wheel, right", np.flatnonzero(right)[ys[right].argmax()]),
    ]


def picture(rows: list[tuple[str, np.ndarray]]) -> Image.Image:
    width = max(r.shape[1] for _, r in rows)
    header = 26
    out = Image.new("RGB", (width, sum(r.shape[0] + header for _, r in rows)), "white")
    draw, y = ImageDraw.Draw(out), 0
    for label, row in rows:
        draw.text(
            (6, y + 7),
            label + "   (photo | before, after over a checkerboard | before, after over dark blue)",
            fill="black",
        )
        out.paste(Image.fromarray(row), (0, y + header))
        y += header + row.shape[0]
    return out


def refuse_to_commit(output: Path) -> None:
    """Real photos must not land where git would take them."""
    inside = (
        subprocess.run(
            ["git", "-C", str(output.parent), "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True
        ).stdout.strip()
        == "true"
    )
    ignored = subprocess.run(["git", "-C", str(output.parent), "check-ignore", "-q", output.name]).returncode == 0
    if inside and not ignored:
        raise SystemExit(
            f"{output}: real photos must never be committed; write into an ignored folder "
            "(runs/, .device/) or use --synthetic"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path)
    parser.add_argument("--photos", type=Path, default=TEST, help="folder of real test photos (<car>_<NN>.jpg)")
    parser.add_argument(
        "--crop",
        action="append",
        default=[],
        metavar="STEM:WHAT:X:Y",
        help="a crop of a real photo (instead of the built-in list); repeatable",
    )
    parser.add_argument("--synthetic", action="store_true", help="a synthetic set at 1918x1280 instead")
    parser.add_argument("--size", type=int, default=160, help="crop side, pixels")
    parser.add_argument("--zoom", type=int, default=2)
    args = parser.parse_args()
    output = args.output or Path("runs/edge-crops") / ("synthetic.png" if args.synthetic else "real.png")
    output.parent.mkdir(parents=True, exist_ok=True)
    predictor, rows = Predictor(device="cpu"), []
    if args.synthetic:
        from carmask.synth import make_dataset

        with tempfile.TemporaryDirectory() as tmp:
            data = make_dataset(tmp, cars=2, size=(1918, 1280), seed=5)
            for photo_set in group_by_car(find_photos([data / "train"])):
                wanted = photo_set.paths[2]
                plain, refined = cutouts(predictor, photo_set.paths, wanted)
                photo = np.asarray(Image.open(wanted).convert("RGB"))
                for what, x, y in outline_crops(plain.alpha):
                    rows.append((f"{wanted.name}: {what}", crop_row(photo, plain, refined, x, y, args.size, args.zoom)))
    else:
        refuse_to_commit(output.resolve())
        crops = [(s, w, int(x), int(y)) for s, w, x, y in (c.split(":") for c in args.crop)] or REAL_CROPS
        done = {}
        for stem, what, x, y in crops:
            if stem not in done:
                wanted = args.photos / f"{stem}.jpg"
                paths = next(s.paths for s in group_by_car(find_photos([args.photos])) if wanted in s.paths)
                done[stem] = (np.asarray(Image.open(wanted).convert("RGB")), *cutouts(predictor, paths, wanted))
            rows.append((f"{stem}: {what}", crop_row(*done[stem], x, y, args.size, args.zoom)))
    picture(rows).save(output, optimize=True)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()

"""`carmask cutout`: transparent PNGs, masks or the car over a background."""
from __future__ import annotations

import io
import sys
from collections import Counter
from pathlib import Path

import click

from carmask.cli.common import (batch_option, check_model, device_option, fail, main, make_predictor,
                                model_option)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@main.command(epilog="Exit status: 0 every photo cut out (or kept), 1 some photos skipped "
                     "(each named on stderr), 2 usage or input error.")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True,
              help="Output folder, an image file name for a single input, or - for standard output.")
@click.option("--bg", "background", default="transparent", show_default=True,
              help="transparent (RGBA PNG), mask (<name>_mask.png), a colour (green, #00b900, 0,185,0) "
                   "or an image file.")
@click.option("--refine/--no-refine", default=True, show_default=True,
              help="Re-decide the edges at the photo's own resolution.")
@click.option("--tta", is_flag=True, help="Also predict the mirrored photo and average (slower).")
@model_option
@device_option
@batch_option
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (default: keep them).")
def cutout(inputs, output, background, refine, tta, model, device, batch_size, overwrite):
    """Cut cars out of photos: files, folders or globs (INPUT...), or - for
    one photo on standard input.

    Photos named <car>_<NN>.jpg that form a set of at least 3 views are cut
    out with the multi-view model; other photos one by one. Outputs are
    <name>.png (<name>.jpg over a colour or an image, <name>_mask.png for
    masks); two inputs that would share a name get distinct ones.
    """
    from tqdm import tqdm

    from carmask.cutout import parse_background, remove_set
    from carmask.io import ImageError, find_photos, group_by_car, save_image

    try:
        back = parse_background(background)
    except (ValueError, ImageError) as exc:
        raise click.BadParameter(str(exc), param_hint="--bg") from None
    stdin = "-" in inputs
    if stdin and len(inputs) > 1:
        raise click.UsageError("- (standard input) is one photo: give it alone")
    photos = [Path("-")] if stdin else find_photos(inputs)
    if not photos:
        raise click.UsageError(f"no photos found in {' '.join(inputs)}")
    to_stdout = output == "-"
    single_file = len(photos) == 1 and Path(output).suffix.lower() in IMAGE_SUFFIXES
    if to_stdout and len(photos) > 1:
        raise click.UsageError(f"-o - (standard output) takes one photo, not {len(photos)}")
    if stdin and not (to_stdout or single_file):
        raise click.UsageError("a photo from standard input needs -o FILE.png or -o -")
    targets = {photo: Path(output) for photo in photos} if to_stdout or single_file else \
        output_names(photos, Path(output), back)
    todo = {p for p in photos if to_stdout or overwrite or not targets[p].exists()}
    kept = len(photos) - len(todo)
    check_model(model)
    predictor = make_predictor(model, device, batch_size)
    predictor.tta = tta
    skipped: Counter[str] = Counter()
    written = 0
    sets = [s for s in group_by_car(photos) if any(p in todo for p in s.paths)]
    with tqdm(total=sum(len(s.paths) for s in sets), unit="photo", desc="cutting out", file=sys.stderr,
              disable=not sys.stderr.isatty() or len(photos) == 1) as bar:
        for photo_set in sets:
            items = [("stdin", click.get_binary_stream("stdin").read())] if stdin else \
                [(str(p), p) for p in photo_set.paths]
            for name, result in remove_set(items, predictor, back, refine=refine):
                bar.update()
                photo = Path("-") if stdin else Path(name)
                if photo not in todo:
                    continue
                if isinstance(result, ImageError):
                    skipped["too few views" if "views" in result.reason else "unreadable"] += 1
                    fail(f"skipped {result}")
                    continue
                try:
                    if to_stdout:
                        _write_stdout(result)
                    else:
                        save_image(targets[photo], result)
                    written += 1
                except OSError as exc:
                    skipped["not written"] += 1
                    fail(f"skipped {name}: cannot write {targets[photo]} ({exc.strerror or exc})")
    click.echo(summary(written, kept, skipped, "standard output" if to_stdout else output), err=True)
    if skipped:
        sys.exit(1)


def output_names(photos: list[Path], folder: Path, background) -> dict[Path, Path]:
    """Each photo's output file in `folder`: <stem>.png, .jpg over a colour or an
    image, <stem>_mask.png for masks. Photos that would share a name use their
    full name (car_01.jpg.png) and, if still shared, -2, -3... in input order."""
    suffix = "_mask.png" if isinstance(background, str) and background == "mask" else \
        ".png" if isinstance(background, str) else ".jpg"
    stems = Counter(p.stem for p in photos)
    names = [p.stem if stems[p.stem] == 1 else p.name for p in photos]
    taken: Counter[str] = Counter()
    out = {}
    for photo, name in zip(photos, names):
        taken[name] += 1
        unique = name if taken[name] == 1 else f"{name}-{taken[name]}"
        out[photo] = folder / f"{unique}{suffix}"
    return out


def summary(written: int, kept: int, skipped: Counter, where) -> str:
    parts = [f"wrote {written} cut-out(s) to {where}"]
    if kept:
        parts.append(f"kept {kept} existing (--overwrite replaces them)")
    if skipped:
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(skipped.items()))
        parts.append(f"skipped {sum(skipped.values())} ({kinds})")
    return "; ".join(parts)


def _write_stdout(image) -> None:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    stream = click.get_binary_stream("stdout")
    stream.write(buffer.getvalue())
    stream.flush()

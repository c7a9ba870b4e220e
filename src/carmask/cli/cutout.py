"""`carmask cutout`: transparent PNGs, masks or the car over a background."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import click

from carmask.cli.common import (batch_option, check_model, device_option, fail, main, make_predictor,
                                model_option)


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Output folder, or an image file name for a single input.")
@click.option("--bg", "background", default="transparent", show_default=True,
              help="transparent (RGBA PNG), mask, a colour (green, #00b900, 0,185,0) or an image file.")
@model_option
@device_option
@batch_option
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (default: keep them).")
def cutout(inputs, output, background, model, device, batch_size, overwrite):
    """Cut cars out of photos: files, folders or globs (INPUT...).

    Photos named <car>_<NN>.jpg that form a set of at least 3 views are cut
    out with the multi-view model; other photos one by one.
    """
    from tqdm import tqdm

    from carmask.cutout import compose, parse_background
    from carmask.io import ImageError, find_photos, group_by_car, read_photo, save_image

    try:
        back = parse_background(background)
    except (ValueError, ImageError) as exc:
        raise click.BadParameter(str(exc), param_hint="--bg") from None
    photos = find_photos(inputs)
    if not photos:
        raise click.UsageError(f"no photos found in {' '.join(inputs)}")
    single_file = len(photos) == 1 and output.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")
    suffix = ".png" if isinstance(back, str) else ".jpg"

    stems = Counter(p.stem for p in photos)

    def target(photo: Path) -> Path:
        # car_01.jpg and car_01.png in one run must not share an output file.
        name = photo.stem if stems[photo.stem] == 1 else photo.name
        return output if single_file else output / f"{name}{suffix}"

    todo = [p for p in photos if overwrite or not target(p).exists()]
    if len(todo) < len(photos):
        click.echo(f"keeping {len(photos) - len(todo)} existing output(s); --overwrite replaces them", err=True)
    check_model(model)
    predictor = make_predictor(model, device, batch_size)
    # Whole sets go to the predictor (the background needs every view).
    todo_set = set(todo)
    sets = [s for s in group_by_car(photos) if any(p in todo_set for p in s.paths)]
    skipped = []
    with tqdm(total=sum(len(s.paths) for s in sets), unit="photo", desc="cutting out",
              file=sys.stderr, disable=len(photos) == 1) as bar:
        for prediction in predictor.predict_sets(sets):
            bar.update()
            if prediction.path not in todo_set:
                continue
            try:
                if prediction.error:
                    raise ImageError(prediction.path, prediction.error.split(": ", 1)[-1])
                image = compose(read_photo(prediction.path), prediction.probs, back)
                save_image(target(prediction.path), image)
            except (ImageError, OSError) as exc:
                skipped.append(str(exc))
                fail(f"skipped {exc}")
    click.echo(f"wrote {len(todo) - len(skipped)} cut-out(s) to {output}", err=True)
    if skipped:
        fail(f"{len(skipped)} photo(s) skipped")
        sys.exit(1)

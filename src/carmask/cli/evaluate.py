"""`carmask evaluate`: mean dice against a dataset's masks."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from carmask.cli.common import InputError, check_output, detail, fail, info, main, result, verbosity_options, writing
from carmask.cli.loop import Run
from carmask.cli.options import (
    check_model,
    check_refiner,
    describe_predictor,
    make_predictor,
    prediction_options,
    size_callback,
    size_option,
)
from carmask.cli.outcomes import some


@main.command(short_help="Print the mean dice against a dataset's masks.")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@prediction_options
@size_option
@click.option(
    "--masks",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Masks folder (default: train_masks/ beside the photos).",
)
@click.option(
    "--cars",
    "cars_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='Score only these cars: a training run\'s split.json (its held-out "val" cars), '
    "a JSON list, or a text file with one car id a line.",
)
@click.option(
    "--report",
    type=click.Path(path_type=Path),
    help="Folder for dice.csv, a histogram, dice per view and a gallery of the worst images.",
)
@click.option("--overwrite", is_flag=True, help="Write the report into a folder that already holds files.")
@click.option(
    "--resize-loss",
    callback=size_callback,
    metavar="WxH",
    help="Also measure the dice lost by resizing the true masks to WxH and back.",
)
@verbosity_options
def evaluate(
    data_dir,
    model,
    refiner,
    output_size,
    tta,
    sets,
    device,
    batch_size,
    masks,
    cars_file,
    report,
    overwrite,
    resize_loss,
):
    """Print the mean per-image dice of predictions against DATA_DIR's masks.

    Predictions are on each photo's stored pixel grid, the grid of the masks
    (photos are not turned by their EXIF orientation). Views without a mask
    only serve their car's background. Each skipped photo or mask is named on
    stderr, and each car not predicted as its names suggest.
    """
    from carmask.evaluate import Scores, scored_sets

    if report:
        check_output(report, folder=True, overwrite=overwrite)
    cars = _cars(cars_file)
    try:
        photo_sets, masks_dir = scored_sets(data_dir, masks, cars)
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from None
    _check_sets(photo_sets, cars, cars_file, data_dir, masks_dir)
    if resize_loss:
        _resize_loss(photo_sets, masks_dir, resize_loss)
    check_model(model)
    check_refiner(refiner, model, device)
    predictor = make_predictor(
        model, device, batch_size, tta=tta, sets=sets, upright=False, refiner=refiner
    )  # the masks' grid
    todo = sum(len(s.paths) for s in photo_sets)
    detail(f"{describe_predictor(model, predictor.device, tta)}; {todo} photos of {len(photo_sets)} cars")
    run, scores = Run("evaluating"), Scores()

    def score(prediction) -> None:
        unusable = scores.add(prediction, masks_dir)  # a mask that cannot be read
        if unusable:
            run.skips.add(unusable)

    with predictor:  # its decoding threads end with the run
        run.over(predictor.predict_sets(photo_sets, output_size=output_size), todo, score)
    if scores.dice:
        result(f"mean dice {scores.mean:.5f} over {len(scores.dice)} images")
    if scores.unscored:
        info(f"{scores.unscored} view(s) without a mask served only the background")
    status = run.summary(nothing=None if scores.dice else "no image could be scored")
    if report and scores.dice:
        from carmask.report import write_evaluation_report

        with writing(report):
            written = write_evaluation_report(scores, report)
        info(f"wrote {len(written)} files to {report}: {', '.join(p.name for p in written)}")
    if status:
        sys.exit(status)


def _resize_loss(photo_sets, masks_dir, size) -> None:
    """The dice lost by resizing the sets' masks to `size` and back (stdout)."""
    from carmask.evaluate import resize_loss
    from carmask.kaggle import mask_path

    mask_files = [mask_path(p, masks_dir) for s in photo_sets for p in s.paths]
    loss = resize_loss([m for m in mask_files if m.exists()], size)
    unreadable = [Path(error.path).name for error in loss["skipped"]]
    left_out = f" ({len(unreadable)} unreadable left out: {some(unreadable)})" if unreadable else ""
    if loss["masks"]:
        result(
            f"resize loss at {size[0]}x{size[1]} over {loss['masks']} masks{left_out}: "
            f"dice {loss['soft']:.5f} resizing probabilities (bilinear), "
            f"{loss['hard']:.5f} resizing hard masks (nearest)"
        )
    else:
        fail(f"resize loss: no readable mask{left_out}")


def _cars(cars_file):
    if cars_file is None:
        return None
    from carmask.evaluate import read_cars

    try:
        cars = read_cars(cars_file)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    held_out = " held-out (val)" if cars_file.read_text().lstrip().startswith("{") else ""
    info(f"scoring the {len(cars)}{held_out} car{'s' if len(cars) > 1 else ''} of {cars_file}")
    return cars


def _check_sets(sets, cars, cars_file, data_dir, masks_dir):
    """Nothing to score is an error; cars of the list that are not there are named."""
    found = {s.car for s in sets}
    if cars is not None:
        missing = [c for c in cars if c not in found]
        if len(missing) == len(cars):
            raise InputError(
                f"none of the {len(cars)} car(s) of {cars_file} has photos with masks in "
                f"{data_dir} (masks from {masks_dir}): {some(missing)}"
            )
        if missing:
            info(
                f"{len(missing)} of the {len(cars)} cars of {cars_file} have no photos with masks in "
                f"{data_dir} (masks from {masks_dir}): {some(missing)}"
            )
    elif not sets:
        others = sorted(p.name for p in Path(masks_dir).iterdir() if not p.name.startswith("."))
        seen = f"; it holds {len(others)} other file(s): {some(others, 2)}" if others else ""
        raise InputError(f"no photos with masks in {data_dir} (masks from {masks_dir}, named <photo>_mask.gif{seen})")

"""`carmask evaluate`: mean dice against a dataset's masks."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from carmask.cli.common import (batch_option, check_model, device_option, fail, main, make_predictor,
                                model_option, size_callback, size_option)


@main.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@model_option
@size_option
@device_option
@batch_option
@click.option("--masks", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Masks folder (default: train_masks/ beside the photos).")
@click.option("--cars", "cars_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Score only these cars: a text file with one car id a line (or a JSON list).")
@click.option("--report", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for dice.csv, a histogram, dice per view and a gallery of the worst images.")
@click.option("--resize-loss", callback=size_callback, metavar="WxH",
              help="Also measure the dice lost by resizing the true masks to WxH and back.")
def evaluate(data_dir, model, output_size, device, batch_size, masks, cars_file, report, resize_loss):
    """Print the mean per-image dice of predictions against DATA_DIR's masks."""
    from tqdm import tqdm

    from carmask.evaluate import evaluate as run_evaluation, resize_loss as measure_resize_loss, scored_sets
    from carmask.io import mask_path

    cars = _read_cars(cars_file) if cars_file else None
    try:
        sets, masks_dir = scored_sets(data_dir, masks, cars)
    except FileNotFoundError as exc:
        raise click.UsageError(str(exc)) from None
    if resize_loss:
        mask_files = [mask_path(p, masks_dir) for s in sets for p in s.paths]
        loss = measure_resize_loss([m for m in mask_files if m.exists()], resize_loss)
        click.echo(f"resize loss at {resize_loss[0]}x{resize_loss[1]} over {loss['masks']} masks: "
                   f"dice {loss['soft']:.5f} resizing probabilities (bilinear), "
                   f"{loss['hard']:.5f} resizing hard masks (nearest)")
    check_model(model)
    predictor = make_predictor(model, device, batch_size, upright=False)  # the masks' stored pixel grid
    with tqdm(total=sum(len(s.paths) for s in sets), unit="photo", desc="evaluating", file=sys.stderr) as bar:
        scores = run_evaluation(predictor, data_dir, masks, output_size, cars, progress=bar.update)
    for reason in scores.skipped:
        fail(f"skipped {reason}")
    click.echo(f"mean dice {scores.mean:.5f} over {len(scores.dice)} images")
    if report:
        from carmask.report import write_evaluation_report
        for path in write_evaluation_report(scores, report):
            click.echo(f"wrote {path}", err=True)
    if scores.skipped:
        sys.exit(1)


def _read_cars(path: Path) -> list[str]:
    text = path.read_text()
    return json.loads(text) if text.lstrip().startswith("[") else text.split()

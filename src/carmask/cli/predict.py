"""`carmask predict`: a Kaggle submission CSV for a folder of photos."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from carmask.cli.common import (batch_option, check_model, device_option, fail, main, make_predictor,
                                model_option, size_option)


@main.command()
@click.argument("photo_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Submission CSV to write (img,rle_mask).")
@model_option
@size_option
@device_option
@batch_option
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--compile", "compile_model", is_flag=True,
              help="torch.compile the model (CUDA graphs on a GPU): slower start, faster on large runs.")
@click.option("--engine", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="local: this process; ray: a pool of actors on a Ray cluster (carmask[ray]).")
@click.option("--ray-address", envvar="RAY_ADDRESS", metavar="ADDRESS",
              help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray instance).")
@click.option("--actors", type=click.IntRange(min=1),
              help="Ray actors, one model each (default: one per GPU, else one per CPU).")
def predict(photo_dir, output, model, output_size, device, batch_size, overwrite, compile_model,
            engine, ray_address, actors):
    """Predict a mask for every photo in PHOTO_DIR and write a Kaggle submission CSV.

    Resumable: if a run is interrupted, run the same command again. Exits
    non-zero when any photo was skipped; each one is named on stderr.
    """
    check_model(model)
    if engine == "ray":
        predictor = _ray_predictor(model, device, batch_size, actors, ray_address)
        try:
            _write_submission(predictor, photo_dir, output, output_size, overwrite)
        finally:
            predictor.close()
    else:
        # masks on the stored pixel grid (Kaggle's convention), not turned by EXIF
        _write_submission(make_predictor(model, device, batch_size, compile_model, upright=False), photo_dir,
                          output, output_size, overwrite)


def _ray_predictor(model, device, batch_size, actors, address):
    try:
        from carmask.ray_engine import RayPredictor
        return RayPredictor(model, device=device, batch_size=batch_size, actors=actors, address=address,
                            upright=False)  # masks on the stored pixel grid, as Kaggle's
    except (ImportError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None


def _write_submission(predictor, photo_dir, output, output_size, overwrite):
    """The submission from either engine: rows as they come, resumable, skips named."""
    from tqdm import tqdm

    from carmask.io import find_photos, group_by_car
    from carmask.submission import SubmissionWriter

    try:
        writer = SubmissionWriter(output, overwrite=overwrite)
    except FileExistsError as exc:
        raise click.UsageError(str(exc)) from None
    sets = [s for s in group_by_car(find_photos([photo_dir]))
            if not all(p.name in writer.done for p in s.paths)]
    todo = sum(len(s.paths) for s in sets)
    if writer.done:
        click.echo(f"resuming: {len(writer.done)} rows already written", err=True)
    skipped = []
    try:
        with tqdm(total=todo, unit="photo", desc="predicting", file=sys.stderr) as bar:
            for prediction in predictor.predict_sets(sets, output_size=output_size, encode=True):
                bar.update()
                if prediction.error:
                    skipped.append(prediction.error)
                    fail(f"skipped {prediction.error}")
                elif prediction.path.name not in writer.done:
                    writer.write(prediction.path.name, prediction.runs)
    except KeyboardInterrupt:
        writer.close()
        fail("interrupted: run the same command again to continue")
        sys.exit(130)
    except BaseException:
        writer.close()  # what was predicted stays in the partial file for a resume
        raise
    writer.finish()
    click.echo(f"wrote {output} ({len(writer.done)} rows)", err=True)
    if skipped:
        fail(f"{len(skipped)} photo(s) skipped")
        sys.exit(1)

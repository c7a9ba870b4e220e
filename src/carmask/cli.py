"""`carmask`: one verb per task, each a thin shell over the modules."""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import click

from carmask import __version__
from carmask.io import parse_size


def _size(ctx, param, value):
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _fail(message: str) -> None:
    click.echo(f"carmask: {message}", err=True)


def _predictor(model, device, batch_size, compile=False):
    from carmask.predict import Predictor
    try:
        return Predictor(model, device=device, batch_size=batch_size, compile=compile)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _check_model(model):
    """Fail early, before any work, on a model that is not there."""
    if model is None:
        return
    from carmask import models
    try:
        models.load(model)
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None


model_option = click.option("--model", help="Shipped model name (seed, multiview, rgb) or a checkpoint "
                                            "path. Default: the best shipped model for each photo.")
size_option = click.option("--output-size", callback=_size, metavar="WxH",
                           help="Mask size, e.g. 1918x1280. Default: each photo's own size.")
device_option = click.option("--device", default="auto", show_default=True,
                             type=click.Choice(["auto", "cpu", "cuda"]))
batch_option = click.option("--batch-size", default=16, show_default=True, help="Photos per model batch.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="carmask")
def main():
    """Remove the studio background from car photos.

    Photos named <car>_<NN>.jpg (Kaggle Carvana layout) are grouped by car:
    sets of at least 3 views use the car's median background.
    """


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
    _check_model(model)
    if engine == "ray":
        predictor = _ray_predictor(model, device, batch_size, actors, ray_address)
        try:
            _write_submission(predictor, photo_dir, output, output_size, overwrite)
        finally:
            predictor.close()
    else:
        _write_submission(_predictor(model, device, batch_size, compile_model), photo_dir, output,
                          output_size, overwrite)


def _ray_predictor(model, device, batch_size, actors, address):
    try:
        from carmask.ray_engine import RayPredictor
        return RayPredictor(model, device=device, batch_size=batch_size, actors=actors, address=address)
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
                    _fail(f"skipped {prediction.error}")
                elif prediction.path.name not in writer.done:
                    writer.write(prediction.path.name, prediction.runs)
    except KeyboardInterrupt:
        writer.close()
        _fail("interrupted: run the same command again to continue")
        sys.exit(130)
    except BaseException:
        writer.close()  # what was predicted stays in the partial file for a resume
        raise
    writer.finish()
    click.echo(f"wrote {output} ({len(writer.done)} rows)", err=True)
    if skipped:
        _fail(f"{len(skipped)} photo(s) skipped")
        sys.exit(1)


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
@click.option("--resize-loss", callback=_size, metavar="WxH",
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
    _check_model(model)
    predictor = _predictor(model, device, batch_size)
    with tqdm(total=sum(len(s.paths) for s in sets), unit="photo", desc="evaluating", file=sys.stderr) as bar:
        scores = run_evaluation(predictor, data_dir, masks, output_size, cars, progress=bar.update)
    for reason in scores.skipped:
        _fail(f"skipped {reason}")
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
    _check_model(model)
    predictor = _predictor(model, device, batch_size)
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
                _fail(f"skipped {exc}")
    click.echo(f"wrote {len(todo) - len(skipped)} cut-out(s) to {output}", err=True)
    if skipped:
        _fail(f"{len(skipped)} photo(s) skipped")
        sys.exit(1)


@main.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: checkpoints, metrics.csv, curve.png.")
@click.option("--arch", default="seed", show_default=True, type=click.Choice(["seed", "unet"]))
@click.option("--inputs", default=None, help="Input channels, comma-separated from rgb, median_diff, "
                                             "mean_diff. Default: rgb,median_diff.")
@click.option("--size", callback=_size, metavar="WxH", help="Network input size (seed: 100x100).")
@click.option("--frame", callback=_size, metavar="WxH", help="Size at which photos meet their "
                                                             "background (seed: 480x320).")
@click.option("--crop/--no-crop", default=None, help="Auto-crop to the car (the seed's default).")
@click.option("--width", default=16, show_default=True, help="U-Net channels at full resolution.")
@click.option("--depth", default=4, show_default=True, help="U-Net downsamplings.")
@click.option("--epochs", default=40, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--val-fraction", default=0.15, show_default=True, help="Share of cars held out.")
@click.option("--augment/--no-augment", default=None, help="Flips, shift/scale/rotation, colour "
                                                           "jitter (default: on for unet).")
@click.option("--max-minutes", type=float, help="Time budget: the learning-rate schedule follows it, then training stops.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the prepared-input cache (default: RUN_DIR/cache).")
@click.option("--seed", default=0, show_default=True, help="Random seed (split, init, order).")
@device_option
@click.option("--resume", is_flag=True, help="Continue from RUN_DIR/last.pt.")
def train(data_dir, run_dir, arch, inputs, size, frame, crop, width, depth, epochs, batch_size, lr,
          val_fraction, augment, max_minutes, cache, seed, device, resume):
    """Train a model on a Kaggle-layout DATA_DIR (train/ + train_masks/), split by car.

    On N GPUs: torchrun --nproc-per-node N -m carmask train ... (each GPU takes
    1/N of every batch).
    """
    from carmask import distributed
    from carmask.train import SEED_SPEC, TrainConfig, train as run_training
    from carmask.views import InputSpec

    seed_like = arch == "seed"
    try:
        spec = InputSpec(channels=tuple(inputs.split(",")) if inputs else SEED_SPEC.channels,
                         size=size or (SEED_SPEC.size if seed_like else (256, 256)),
                         frame=frame or (SEED_SPEC.frame if seed_like else None),
                         crop=SEED_SPEC.crop if crop is None and seed_like else bool(crop))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--inputs") from None
    unet = arch == "unet"
    config = TrainConfig(arch=arch, arch_kwargs={"width": width, "depth": depth} if unet else {},
                         spec=spec, epochs=epochs, batch_size=batch_size, lr=lr,
                         val_fraction=val_fraction, seed=seed,
                         augment=unet if augment is None else augment,
                         dice_weight=1.0 if unet else 0.0, edge_weight=2.0 if unet else 0.0,
                         schedule="cosine" if unet else "constant", max_minutes=max_minutes)
    try:
        best = run_training(data_dir, run_dir, config, device=device, resume=resume, cache_dir=cache)
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    if distributed.is_main():  # under torchrun, once
        click.echo(f"best model: {best}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@model_option
@device_option
def serve(host, port, model, device):
    """Serve the HTTP API and the web page (POST /api/cutout, GET /health, GET /)."""
    _check_model(model)
    from carmask.serve import run
    run(host=host, port=port, model=model, device=device)


@main.command()
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
@click.option("--cars", default=4, show_default=True, help="Cars with masks (train/).")
@click.option("--test-cars", default=1, show_default=True, help="Cars without masks (test/).")
@click.option("--views", default=16, show_default=True)
@click.option("--size", callback=_size, default="192x128", show_default=True, metavar="WxH")
@click.option("--seed", default=0, show_default=True)
def synth(output, cars, test_cars, views, size, seed):
    """Write a synthetic turntable dataset (Kaggle layout, exact masks) to OUTPUT."""
    from carmask.synth import make_dataset
    make_dataset(output, cars=cars, views=views, size=size, seed=seed, test_cars=test_cars)
    click.echo(f"wrote {output}")


@main.command("export")
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="ONNX file to write, e.g. model.onnx.")
@click.option("--opset", default=17, show_default=True, help="ONNX opset version.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def export_onnx(model, output, opset, overwrite):
    """Export MODEL (a shipped name or a checkpoint) to ONNX, for onnxruntime or --model."""
    from carmask.onnx_export import export
    if output.exists() and not overwrite:
        raise click.UsageError(f"{output} exists; --overwrite replaces it")
    try:
        export(model, output, opset=opset)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"wrote {output}")


if __name__ == "__main__":
    main()

"""`carmask train`: train a recipe on a Kaggle-layout dataset, split by car."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from carmask.cli.common import (
    NORMAL,
    InputError,
    check_output,
    detail,
    info,
    interrupted,
    main,
    result,
    verbosity,
    verbosity_options,
    warn,
)
from carmask.cli.options import LateHelp, device_option, size_callback
from carmask.cli.outcomes import Skips

# What a run writes in its folder (the input cache, kept by --overwrite, is keyed by its content).
RUN_FILES = ("best.pt", "model.pt", "last.pt", "metrics.csv", "curve.png", "split.json")


@main.command(short_help="Train a model (a recipe) on a Kaggle-layout dataset.")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    "run_dir",
    required=True,
    type=click.Path(path_type=Path),
    help=f"Run folder (created): {', '.join(RUN_FILES)}.",
)
@click.option(
    "--recipe",
    default="seed",
    show_default=True,
    metavar="NAME",
    cls=LateHelp,
    late_help=lambda: (
        f"The settings that trained a model (carmask.recipes): {', '.join(_recipes())}. "
        "The options below change single fields."
    ),
)
@click.option("--arch", type=click.Choice(["seed", "unet"]), help="Network architecture.")
@click.option("--width", type=click.IntRange(min=1), help="U-Net channels at full resolution.")
@click.option("--depth", type=click.IntRange(min=1), help="U-Net downsamplings.")
@click.option("--inputs", help="Input channels, comma-separated from rgb, median_diff, mean_diff.")
@click.option("--size", callback=size_callback, metavar="WxH", help="Network input size.")
@click.option(
    "--frame",
    callback=size_callback,
    metavar="WxH",
    help="Size at which photos meet their background (default: follows --size where the recipe's does).",
)
@click.option("--crop/--no-crop", default=None, help="Crop to the car's box from the background.")
@click.option("--epochs", type=click.IntRange(min=1), help="At most this many epochs.")
@click.option(
    "--max-minutes",
    type=click.FloatRange(min=0),
    help="Time budget: the learning-rate schedule follows it, then training stops (0: none, --epochs decides).",
)
@click.option("--batch-size", type=click.IntRange(min=1), help="Photos per step, over all processes.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Peak learning rate (AdamW).")
@click.option("--weight-decay", type=click.FloatRange(min=0), help="AdamW weight decay.")
@click.option("--schedule", type=click.Choice(["constant", "cosine"]), help="Learning-rate schedule.")
@click.option(
    "--dice-weight", type=click.FloatRange(min=0), help="Weight of the soft-dice loss beside BCE (0: BCE only)."
)
@click.option("--edge-weight", type=click.FloatRange(min=0), help="Extra BCE weight on pixels near the car's edge.")
@click.option("--augment/--no-augment", default=None, help="Flips, shift/scale/rotation, colour jitter.")
@click.option(
    "--val-fraction",
    type=click.FloatRange(min=0, max=1, max_open=True),
    cls=LateHelp,
    late_help=lambda: f"Share of cars held out (default {_recipes()['seed'].val_fraction}).",
)
@click.option(
    "--seed",
    type=int,
    cls=LateHelp,
    late_help=lambda: f"Random seed: split, initialisation, order (default {_recipes()['seed'].seed}).",
)
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the prepared-input cache (default: RUN_DIR/cache).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Processes that prepare the input cache (default: one per core on 4 cores or more, at most one per 4 cars).",
)
@device_option
@click.option("--resume", is_flag=True, help="Continue from RUN_DIR/last.pt (afresh if there is none).")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Train afresh into a run folder that holds an earlier run: "
    "its checkpoints, metrics and split are deleted first "
    "(the input cache is kept: it is named by its content).",
)
@verbosity_options
def train(data_dir, run_dir, recipe, inputs, cache, workers, device, resume, overwrite, **fields):
    """Train a model on a Kaggle-layout DATA_DIR (train/ + train_masks/), split by car.

    `--recipe multiview-fast` trains the shipped multiview-fast model again;
    each model card in src/carmask/weights/ gives its command. Prints the
    best checkpoint's path (stdout); each epoch's figures go to stderr (and
    to RUN_DIR/metrics.csv), a progress bar only on a terminal. Photos left
    out (unreadable, no mask, too few views) are named, and the exit status
    is then 1.

    On N GPUs: torchrun --nproc-per-node N -m carmask train ... (each GPU takes
    1/N of every batch).
    """
    from carmask import distributed
    from carmask.data import discover
    from carmask.recipes import recipe as make_recipe

    try:
        config = make_recipe(recipe, channels=tuple(inputs.split(",")) if inputs else None, **fields)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    run_training = _loop_for(config)
    if resume and overwrite:
        raise click.UsageError("--resume continues a run and --overwrite starts afresh: pass one")
    try:
        cars = discover(data_dir)  # the data's layout, before any work
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from None
    main_process = distributed.is_main()  # under torchrun, rank 0 checks, clears and reports
    if main_process:
        _check_run_dir(run_dir, resume, overwrite)
        if cache:
            check_output(cache, folder=True, overwrite=True)
        _say_what_trains(recipe, config, cars, data_dir, run_dir, device)
    skipped = Skips()  # each said at once, counted at the end
    try:
        best = run_training(
            data_dir,
            run_dir,
            config,
            device=device,
            resume=resume,
            cache_dir=cache,
            workers=workers,
            progress=verbosity() >= NORMAL,
            skipped=skipped.add,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc)) from None
    except KeyboardInterrupt as exc:
        interrupted(exc, f"`carmask train ... -o {run_dir} --resume` continues from the last finished epoch")
    if not main_process:
        return
    result(f"best model: {best}")
    if skipped:
        skipped.summary()
        sys.exit(1)


def _loop_for(config):
    """The training loop of a recipe: a coarse model's, or an edge refiner's (a loop of its own)."""
    from carmask.train_config import RefinerConfig

    if isinstance(config, RefinerConfig):
        from carmask.train_refiner import train
    else:
        from carmask.train import train
    return train


def _recipes() -> dict:
    """The recipe table (carmask.recipes, which loads torch: read when --help is shown)."""
    from carmask.recipes import RECIPES

    return RECIPES


def _say_what_trains(recipe: str, config, cars: list, data_dir: Path, run_dir: Path, device: str) -> None:
    from carmask.cli.models import describe_input
    from carmask.devices import pick_device

    info(f"training recipe {recipe} on the {len(cars)} car{'s' * (len(cars) != 1)} of {data_dir}, into {run_dir}")
    if len(cars) < 2 and not config.val_cars:
        warn(
            f"only {len(cars)} car in {data_dir}: none can be held out, so there is no validation "
            "dice and best.pt is the last epoch (held-out cars need at least 2 cars)"
        )
    if hasattr(config, "sources"):  # a RefinerConfig
        on = " and ".join(f"{model} (studio from the {studio})" for model, studio in config.sources)
        detail(f"recipe {recipe}: edge refiner on {on}; {len(cars)} cars in {data_dir}; on cpu")
        return
    options = "".join(f", {k} {v}" for k, v in config.arch_kwargs.items())
    detail(
        f"recipe {recipe}: {config.arch}{options}; input {describe_input(config.spec)}; "
        f"{len(cars)} cars in {data_dir}; on {pick_device(device)}"
    )


def _check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Before any work: a run folder that can be made and written, holding no
    earlier run unless told to resume it or to start afresh (then cleared)."""
    earlier = [name for name in RUN_FILES if (run_dir / name).exists()] if run_dir.is_dir() else []
    if earlier and not (resume or overwrite):
        raise InputError(
            f"{run_dir} holds an earlier run ({', '.join(earlier)}); pass --resume to continue "
            f"it or --overwrite to train afresh"
        )
    check_output(run_dir, folder=True, overwrite=True)
    if overwrite:
        for name in earlier:
            (run_dir / name).unlink()
    if resume and not (run_dir / "last.pt").exists():
        info(f"nothing to resume in {run_dir} (no last.pt): training afresh")

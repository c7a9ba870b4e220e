"""`carmask train`: train a recipe on a Kaggle-layout dataset, split by car."""
from __future__ import annotations

from pathlib import Path

import click

from carmask.cli.common import device_option, main, size_callback


@main.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: checkpoints, metrics.csv, curve.png, split.json.")
@click.option("--recipe", default="seed", show_default=True, metavar="NAME",
              help="The settings that trained a shipped model (carmask.recipes): seed, rgb-fast, "
                   "multiview-fast, rgb-accurate, multiview-accurate; multiview-uncropped (ablation). "
                   "The options below change single fields.")
@click.option("--arch", type=click.Choice(["seed", "unet"]), help="Network architecture.")
@click.option("--width", type=int, help="U-Net channels at full resolution.")
@click.option("--depth", type=int, help="U-Net downsamplings.")
@click.option("--inputs", help="Input channels, comma-separated from rgb, median_diff, mean_diff.")
@click.option("--size", callback=size_callback, metavar="WxH", help="Network input size.")
@click.option("--frame", callback=size_callback, metavar="WxH",
              help="Size at which photos meet their background (default: follows --size where the recipe's does).")
@click.option("--crop/--no-crop", default=None, help="Crop to the car's box from the background.")
@click.option("--epochs", type=int, help="At most this many epochs.")
@click.option("--max-minutes", type=float, help="Time budget: the learning-rate schedule follows it, "
                                                "then training stops (0: none, --epochs decides).")
@click.option("--batch-size", type=int, help="Photos per step, over all processes.")
@click.option("--lr", type=float, help="Peak learning rate (AdamW).")
@click.option("--weight-decay", type=float, help="AdamW weight decay.")
@click.option("--schedule", type=click.Choice(["constant", "cosine"]), help="Learning-rate schedule.")
@click.option("--dice-weight", type=float, help="Weight of the soft-dice loss beside BCE (0: BCE only).")
@click.option("--edge-weight", type=float, help="Extra BCE weight on pixels near the car's edge.")
@click.option("--augment/--no-augment", default=None, help="Flips, shift/scale/rotation, colour jitter.")
@click.option("--val-fraction", type=float, help="Share of cars held out (default 0.15).")
@click.option("--seed", type=int, help="Random seed: split, initialisation, order (default 0).")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the prepared-input cache (default: RUN_DIR/cache).")
@click.option("--workers", type=click.IntRange(min=1),
              help="Processes that prepare the input cache (default: one per core on 4 cores or more, "
                   "at most one per 4 cars).")
@device_option
@click.option("--resume", is_flag=True, help="Continue from RUN_DIR/last.pt.")
def train(data_dir, run_dir, recipe, inputs, cache, workers, device, resume, **fields):
    """Train a model on a Kaggle-layout DATA_DIR (train/ + train_masks/), split by car.

    `--recipe multiview-fast` trains the shipped multiview-fast model again;
    each model card in src/carmask/weights/ gives its command.

    On N GPUs: torchrun --nproc-per-node N -m carmask train ... (each GPU takes
    1/N of every batch).
    """
    from carmask import distributed
    from carmask.recipes import recipe as make_recipe
    from carmask.train import train as run_training

    try:
        config = make_recipe(recipe, channels=tuple(inputs.split(",")) if inputs else None, **fields)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        best = run_training(data_dir, run_dir, config, device=device, resume=resume, cache_dir=cache,
                            workers=workers)
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    if distributed.is_main():  # under torchrun, once
        click.echo(f"best model: {best}")

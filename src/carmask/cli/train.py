"""`carmask train`: train a model on a Kaggle-layout dataset, split by car."""
from __future__ import annotations

from pathlib import Path

import click

from carmask.cli.common import (device_option, main, size_callback)


@main.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: checkpoints, metrics.csv, curve.png.")
@click.option("--arch", default="seed", show_default=True, type=click.Choice(["seed", "unet"]))
@click.option("--inputs", default=None, help="Input channels, comma-separated from rgb, median_diff, "
                                             "mean_diff. Default: rgb,median_diff.")
@click.option("--size", callback=size_callback, metavar="WxH", help="Network input size (seed: 100x100).")
@click.option("--frame", callback=size_callback, metavar="WxH", help="Size at which photos meet their "
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

"""The options the verbs share, and the model they name. Help texts are built
from the constants they describe (the set modes and studio thresholds, the
views a set needs), so that they never go stale; `LateHelp` builds, only when
--help is shown, a help from a table whose module loads torch (the recipes)."""

from __future__ import annotations

from collections.abc import Callable

import click

from carmask.cli.common import InputError
from carmask.inputs.spec import MIN_VIEWS, SETS, STUDIO_DIFFERING, STUDIO_SAME
from carmask.io import parse_size


class LateHelp(click.Option):
    """An option whose help (`late_help()`) is made when --help shows it, not
    when carmask starts: `carmask --version` need not load torch for it."""

    def __init__(self, *args, late_help: Callable[[], str], **kwargs):
        super().__init__(*args, **kwargs)
        self.late_help = late_help

    def get_help_record(self, ctx):
        self.help = self.late_help()
        return super().get_help_record(ctx)


def size_callback(ctx, param, value):
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def make_predictor(model, device, batch_size, compile=False, tta=False, **options):
    from carmask.predict import Predictor

    try:
        return Predictor(model, device=device, batch_size=batch_size, compile=compile, tta=tta, **options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def check_model(model):
    """Fail early, before any work, on a model that is not there or not whole
    (a sentence naming it, exit 2)."""
    from carmask import models

    try:
        models.check(model)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc)) from None


def check_refiner(refiner, model=None, device="auto"):
    """Fail early on a refiner (as `--refiner` names it, after `model` on
    `device`) that is not there or not whole (a sentence naming it, exit 2)."""
    from carmask.devices import pick_device
    from carmask.models import refiner as rf

    try:
        refiner = rf.chosen(refiner, model, pick_device(device))
    except ValueError:  # the device: make_predictor says so
        return
    if refiner is None:
        return
    try:
        rf.load(refiner)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc)) from None


def describe_predictor(model, device, tta=False) -> str:
    """'model seed on cpu' (for --verbose)."""
    return f"model {model or 'the shipped defaults'} on {device}" + (" with tta" if tta else "")


model_option = click.option(
    "--model",
    help="A tier (accurate, fast), a shipped model (multiview-fast, "
    "rgb-fast, seed; `carmask models` lists them; multiview and rgb "
    "mean their best tier) or a checkpoint path. Default: on a GPU the most "
    "accurate tier shipped, on the CPU the fast one; multi-view for sets of "
    f"{MIN_VIEWS}+ views.",
)
refiner_option = click.option(
    "--refiner",
    metavar="NAME",
    default="auto",
    show_default=True,
    help="A learned edge refiner (`carmask models` lists the shipped ones) or its "
    "checkpoint: re-decides every mask's outline at 512x512 after the model. "
    "auto: the shipped one made for the model (edge-refiner-fast after the fast tier, the "
    "default models; none after a checkpoint); none: the model's own outline (the fast tier alone, "
    "2.5x the photos/s on a CPU).",
)
size_option = click.option(
    "--output-size",
    callback=size_callback,
    metavar="WxH",
    help="Mask size, e.g. 1918x1280. Default: each photo's own size.",
)
device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "cpu", "cuda"]),
    help="Where the model runs: auto (a CUDA GPU where there is one, else the CPU), cpu or cuda.",
)
batch_option = click.option(
    "--batch-size", default=16, show_default=True, type=click.IntRange(min=1), help="Photos per model batch."
)
tta_option = click.option(
    "--tta",
    is_flag=True,
    help="Also predict each photo mirrored and average: twice the model work (and the edge refiner's).",
)
recursive_option = click.option("-r", "--recursive", is_flag=True, help="Also take photos in sub-folders.")
AUTO, ALWAYS, NEVER = SETS
sets_option = click.option(
    "--sets",
    default=AUTO,
    show_default=True,
    type=click.Choice(SETS),
    help=f"How photos named <car>_<NN> are grouped. {AUTO}: a car's views are predicted as a set (with its "
    f"median background) only when they share a studio: at least {MIN_VIEWS} readable views of one size, "
    f"each differing from their median background over at most {STUDIO_DIFFERING:.0%} of the frame (the "
    f"car and its shadow) and at least {STUDIO_SAME:.0%} (not copies of one photo); other views are "
    f"predicted photo by photo, with a warning naming them. This tells studios apart, not cars: photos "
    f"of different cars shot in one studio and named as one car's views pass it (use {NEVER}). "
    f"{ALWAYS}: trust the names. {NEVER}: every photo alone.",
)


def prediction_options(command):
    """The options of every verb that predicts: model, refiner, tta, sets, device, batch size."""
    for option in (batch_option, device_option, sets_option, tta_option, refiner_option, model_option):
        command = option(command)
    return command

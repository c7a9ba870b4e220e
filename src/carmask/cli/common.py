"""What the verbs share: the command group, common options and messages."""
from __future__ import annotations

import click

from carmask import __version__
from carmask.io import parse_size


def size_callback(ctx, param, value):
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def fail(message: str) -> None:
    click.echo(f"carmask: {message}", err=True)


def make_predictor(model, device, batch_size, compile=False):
    from carmask.predict import Predictor
    try:
        return Predictor(model, device=device, batch_size=batch_size, compile=compile)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def check_model(model):
    """Fail early, before any work, on a model that is not there."""
    from carmask import models
    try:
        models.check(model)
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None


model_option = click.option("--model", help="A tier (accurate, fast), a shipped model (multiview-fast, "
                                            "rgb-fast, seed; `carmask models` lists them; multiview and rgb "
                                            "mean their best tier) or a checkpoint path. Default: the most "
                                            "accurate tier shipped, multi-view for sets of 3+ views.")
size_option = click.option("--output-size", callback=size_callback, metavar="WxH",
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


"""`carmask models`: the shipped models, what each takes, and what it measured."""
from __future__ import annotations

from carmask.cli.common import InputError, main, result, verbosity_options
from carmask.inputs.spec import MIN_VIEWS
from carmask.io import MiB


def describe_input(spec) -> str:
    """A model's input in a few words, e.g. `photo + median & mean diffs at 256x256, cropped, 128x128`."""
    diffs = [c.removesuffix("_diff") for c in spec.channels if c.endswith("_diff")]
    text = " + ".join(["photo"] * ("rgb" in spec.channels) +
                      [f"{' & '.join(diffs)} diff{'s' * (len(diffs) > 1)}"] * bool(diffs))
    if spec.frame != spec.size or spec.crop:
        text += f" at {'x'.join(map(str, spec.frame))}"
    if spec.crop:
        text += ", cropped"
    return f"{text}, {'x'.join(map(str, spec.size))}"


def rows() -> list[dict[str, str]]:
    """One row of text per shipped model, for `carmask models` and the README."""
    from carmask import models

    catalog = models.catalog()
    defaults = {models.default_for(MIN_VIEWS): "sets of views", models.default_for(1): "single photos"}
    table = []
    for name in models.shipped():
        model, _ = models.load(name)
        figures = catalog.get(name, {})
        size = models.resolve(name).stat().st_size

        def number(key, digits):
            return f"{figures[key]:.{digits}f}" if key in figures else "-"

        table.append({
            "name": name,
            "photos": f"sets of {MIN_VIEWS}+ views" if model.spec.needs_views else "any photo",
            "input": describe_input(model.spec),
            "size": f"{size / MiB:.1f} MiB",
            "dice 512": number("dice_512", 4),
            "dice 1918": number("dice_1918", 4),
            "CPU s/photo": number("cpu_s_per_photo", 3),
            "default for": defaults.get(name, "-"),
        })
    return table


HELP = f"""List the shipped models: the photos each takes, its input, size on disk,
    held-out dice (40 unseen cars at 512x512; at 1918x1280 on the one of them
    with full-size masks) and CPU seconds per 1918x1280 photo (2-core CPU,
    whole predictor: decode to mask).

    Names are <kind>-<tier>: kind multiview (a set of at least {MIN_VIEWS} views of a
    car) or rgb (any photo), tier accurate (best dice, 512x512, slow on a CPU)
    or fast (128x128, for CPU batch work); seed is the write-up's CNN.
    --model takes a name, a kind (its most accurate tier shipped) or a tier
    (that tier for each photo's kind). With no --model, every photo gets the
    most accurate tier shipped: the multiview model in a set, rgb alone.
    """


@main.command("models", short_help="List the shipped models and their figures.", help=HELP)
@verbosity_options
def list_models():
    """`carmask models` (its help: HELP, built from MIN_VIEWS)."""
    try:
        table = rows()
    except (FileNotFoundError, ValueError) as exc:  # a shipped file damaged or missing
        raise InputError(str(exc)) from None
    if not table:
        raise InputError("no model is shipped in this installation (src/carmask/weights/ holds none)")
    columns = list(table[0])
    widths = {c: max(len(c), *(len(r[c]) for r in table)) for c in columns}
    result("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for r in table:
        result("  ".join(r[c].ljust(widths[c]) for c in columns).rstrip())

"""`carmask models`: the shipped models, what each takes, and what it measured."""

from __future__ import annotations

from carmask.cli.common import InputError, main, result, verbosity_options
from carmask.inputs.spec import MIN_VIEWS
from carmask.io import MiB


def describe_input(spec) -> str:
    """A model's input in a few words, e.g. `photo + median & mean diffs at 256x256, cropped, 128x128`."""
    diffs = [c.removesuffix("_diff") for c in spec.channels if c.endswith("_diff")]
    text = " + ".join(
        ["photo"] * ("rgb" in spec.channels) + [f"{' & '.join(diffs)} diff{'s' * (len(diffs) > 1)}"] * bool(diffs)
    )
    if spec.frame != spec.size or spec.crop:
        text += f" at {'x'.join(map(str, spec.frame))}"
    if spec.crop:
        text += ", cropped"
    return f"{text}, {'x'.join(map(str, spec.size))}"


def default_cases(pick) -> dict[str, str]:
    """What each name that `pick(views, device)` gives is the default for:
    "sets of views, single photos", followed by "on the CPU" or "on a GPU"
    where the two devices' defaults differ (None or a ValueError: none)."""
    cases: dict[str, dict[str, list[str]]] = {}  # name -> where -> cases
    for views, case in ((MIN_VIEWS, "sets of views"), (1, "single photos")):
        picked = {}
        for device, where in (("cpu", " on the CPU"), ("cuda", " on a GPU")):
            try:
                picked[where] = pick(views, device)
            except ValueError:  # no model shipped for that case
                picked[where] = None
        if len(set(picked.values())) == 1:  # the same on both: said once, without where
            picked = {"": picked[" on the CPU"]}
        for where, name in picked.items():
            if name is not None:
                cases.setdefault(name, {}).setdefault(where, []).append(case)
    return {name: "; ".join(", ".join(c) + w for w, c in by.items()) for name, by in cases.items()}


def rows() -> list[dict[str, str]]:
    """One row of text per shipped model, for `carmask models` and the README."""
    from carmask import models

    catalog = models.catalog()
    defaults = default_cases(lambda views, device: models.default_for(views, device=device))
    table = []
    for name in models.shipped():
        model, _ = models.load(name)
        figures = catalog.get(name, {})
        size = models.resolve(name).stat().st_size

        def number(key, digits, figures=figures):
            return f"{figures[key]:.{digits}f}" if key in figures else "-"

        table.append(
            {
                "name": name,
                "photos": f"sets of {MIN_VIEWS}+ views" if model.spec.needs_views else "any photo",
                "input": describe_input(model.spec),
                "size": f"{size / MiB:.1f} MiB",
                "dice 512": number("dice_512", 4),
                "dice 1918": number("dice_1918", 4),
                "CPU s/photo": number("cpu_s_per_photo", 3),
                "default for": defaults.get(name, "-"),
            }
        )
    return table


def refiner_rows() -> list[dict[str, str]]:
    """One row of text per shipped edge refiner (weights/refiners/): it runs
    after a fast-tier coarse model, re-deciding the outline at 512x512."""
    from carmask import models
    from carmask.models import refiner

    catalog = refiner.catalog()
    # after the default model of each case, the refiner that runs by default (`refiner.chosen`)
    defaults = default_cases(lambda views, device: refiner.chosen("auto", models.default_for(views, device=device)))
    table = []
    for name in refiner.shipped():
        refiner.load(name)  # a damaged file: a sentence, as for the models
        figures = catalog.get(name, {})

        def change(key, figures=figures):
            before, after = figures.get(f"{key}_before"), figures.get(key)
            return f"{before:.4f} -> {after:.4f}" if before is not None and after is not None else "-"

        seconds = figures.get("cpu_s_per_photo")
        table.append(
            {
                "refiner": name,
                "tier": figures.get("tier", "-"),
                "after": ", ".join(figures.get("after", [])) or "-",
                "size": f"{refiner.resolve(name).stat().st_size / 2**20:.1f} MiB",
                "dice 512, sets": change("dice_512_sets"),
                "dice 512, single": change("dice_512_single"),
                "CPU s/photo": f"+{seconds:.3f}" if seconds is not None else "-",
                "default for": defaults.get(name, "-"),
            }
        )
    return table


def _print_table(table: list[dict[str, str]]) -> None:
    columns = list(table[0])
    widths = {c: max(len(c), *(len(r[c]) for r in table)) for c in columns}
    result("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for r in table:
        result("  ".join(r[c].ljust(widths[c]) for c in columns).rstrip())


HELP = f"""List the shipped models: the photos each takes, its input, size on disk,
    held-out dice (40 unseen cars at 512x512; at 1918x1280 on the one of them
    with full-size masks) and CPU seconds per 1918x1280 photo (2-core CPU,
    whole predictor: decode to mask).

    Names are <kind>-<tier>: kind multiview (a set of at least {MIN_VIEWS} views of a
    car) or rgb (any photo), tier accurate (best dice, 512x512, slow on a CPU)
    or fast (128x128, for CPU batch work); seed is the write-up's CNN.
    --model takes a name, a kind (its most accurate tier shipped) or a tier
    (that tier for each photo's kind). With no --model, every photo gets a
    model of its kind (the multiview model in a set, rgb alone): on a GPU of
    the most accurate tier shipped, on the CPU of the fast tier.

    Then the edge refiners (weights/refiners/): each re-decides the outline of
    a coarse model's masks at 512x512 (dice on the same 40 cars before ->
    after, and the CPU seconds it adds per photo). edge-refiner-fast runs by
    default after the fast tier (--refiner auto); --refiner none leaves the
    model's own outline (docs/RESULTS.md, "Learned edge refiner").
    """


@main.command("models", short_help="List the shipped models and their figures.", help=HELP)
@verbosity_options
def list_models():
    """`carmask models` (its help: HELP, built from MIN_VIEWS)."""
    try:
        table, refiners = rows(), refiner_rows()
    except (FileNotFoundError, ValueError) as exc:  # a shipped file damaged or missing
        raise InputError(str(exc)) from None
    if not table:
        raise InputError("no model is shipped in this installation (src/carmask/weights/ holds none)")
    _print_table(table)
    if refiners:
        result("")
        _print_table(refiners)

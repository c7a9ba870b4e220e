"""`carmask cutout`: transparent PNGs, masks or the car over a background."""

from __future__ import annotations

import errno
import os
import sys
from collections import Counter
from pathlib import Path

import click

from carmask import __version__
from carmask.cli.common import (
    InputError,
    cannot_write,
    check_output,
    detail,
    find_inputs,
    info,
    main,
    refuse_replacing_inputs,
    shown,
    verbosity_options,
    writing,
)
from carmask.cli.loop import Run
from carmask.cli.options import (
    check_model,
    check_refiner,
    describe_predictor,
    make_predictor,
    prediction_options,
    recursive_option,
)
from carmask.cli.outcomes import Skips, some
from carmask.inputs.spec import MIN_VIEWS
from carmask.io import WRITTEN_SUFFIXES
from carmask.outcomes import ImageError, Problem

SOFTWARE_TAG, SOFTWARE = 0x0131, f"carmask {__version__}"  # EXIF Software, on every cut-out
# Errors of the output's place, not of one cut-out: the run stops at the first.
PLACE_FAILED = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


HELP = f"""Cut cars out of photos: files, folders or globs (INPUTS), or - for
    one photo on standard input.

    Photos named <car>_<NN>.jpg that form a set of at least {MIN_VIEWS} views are cut
    out with the multi-view model; other photos one by one. Outputs are
    <name>.png (<name>.jpg over a colour or an image, <name>_mask.png for
    masks), in the sub-folders the photos have below their common folder;
    two inputs that would still share a name get distinct ones; existing
    outputs are kept unless --overwrite. Cut-outs carry carmask's mark (EXIF
    Software), which tells a rerun an earlier cut-out from a photo.
    """


@main.command(short_help="Cut cars out of photos: PNGs, masks or the car over a background.", help=HELP)
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    required=True,
    help="Output folder, an image file name for a single input, or - for standard output.",
)
@click.option(
    "--bg",
    "background",
    default="transparent",
    show_default=True,
    help="transparent (RGBA PNG), mask (<name>_mask.png), a colour (green, #00b900, 0,185,0) or an image file.",
)
@click.option(
    "--refine/--no-refine",
    default=True,
    show_default=True,
    help="Re-decide the edges at the photo's own resolution, from the studio behind the car.",
)
@recursive_option
@prediction_options
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (default: keep them).")
@verbosity_options
def cutout(inputs, output, background, refine, sets, recursive, tta, model, refiner, device, batch_size, overwrite):
    """`carmask cutout` (its help: HELP, built from MIN_VIEWS)."""
    from carmask.cutout import parse_background

    try:
        back = parse_background(background)
    except (ValueError, ImageError) as exc:
        raise click.BadParameter(str(exc), param_hint="--bg") from None
    stdin, to_stdout = "-" in inputs, output == "-"
    if stdin and len(inputs) > 1:
        raise click.UsageError("- (standard input) is one photo: give it alone")
    photos = [Path("-")] if stdin else _less_earlier_outputs(find_inputs(inputs, recursive), output, back)
    single_file = _check_output(output, photos, back, stdin)
    targets = (
        {photo: Path(output) for photo in photos}
        if to_stdout or single_file
        else output_names(photos, Path(output), back)
    )
    if not to_stdout:
        refuse_replacing_inputs(targets)
        _remove_stale_temporaries({target.parent for target in targets.values()})
    todo = {p for p in photos if to_stdout or overwrite or not targets[p].exists()}
    check_model(model)
    check_refiner(refiner, model, device)
    predictor = make_predictor(model, device, batch_size, tta=tta, sets=sets, refiner=refiner)
    detail(describe_predictor(model, predictor.device, tta) + ("" if refine else ", edges not refined"))
    run, write = Run("cutting out"), _Writer(targets, to_stdout, overwrite)
    results = (
        r for r in _cutouts(photos, todo, stdin, predictor, back, refine) if r.path in todo
    )  # the others: views kept from an earlier run, for their set's background
    with predictor:  # its decoding threads end with the run
        run.over(results, len(todo), lambda cut: write(cut, run.skips))
    info(summary(write.written, len(photos) - len(todo) + write.raced, "standard output" if to_stdout else output))
    run.end()


def _check_output(output: str, photos: list[Path], back, stdin: bool) -> bool:
    """Refuse, before any work, what -o cannot take (usage errors, an output
    that cannot be written); whether it names one image file."""
    to_stdout = output == "-"
    _check_image_suffix(output)
    single_file = len(photos) == 1 and _names_image(output)
    if len(photos) > 1 and _names_image(output) and not Path(output).is_dir():
        raise click.UsageError(f"-o {output} names one image, but {len(photos)} photos were given: name a folder")
    if to_stdout and len(photos) > 1:
        raise click.UsageError(f"-o - (standard output) takes one photo, not {len(photos)}")
    if stdin and not (to_stdout or single_file):
        raise click.UsageError("a photo from standard input needs -o FILE.png or -o -")
    if stdin and _is_terminal(sys.stdin):  # it would wait there for a photo, silently
        raise click.UsageError(
            "- reads a photo from standard input, which is a terminal: redirect a photo into it (< car.jpg)"
        )
    if to_stdout and _is_terminal(sys.stdout):
        raise click.UsageError(
            "-o - would write a PNG to the terminal: redirect standard output (> car.png), or name -o FILE.png"
        )
    if not to_stdout:
        check_output(output, folder=not single_file, overwrite=True)  # existing cut-outs are kept, not refused
    if (
        single_file
        and isinstance(back, str)
        and back == "transparent"
        and Path(output).suffix.lower() in (".jpg", ".jpeg")
    ):
        raise click.BadParameter(
            f"{output}: JPEG has no transparency; name a .png or .webp file, or pass --bg COLOUR", param_hint="-o"
        )
    return single_file


class _Writer:
    """Each cut-out to its target, counting those written and those another
    run wrote meanwhile (`raced`: kept); one that cannot be written is a skip.
    A stdout or a disk that cannot take any more ends the run (exit 2); the
    cut-outs written stay."""

    def __init__(self, targets: dict[Path, Path], to_stdout: bool, overwrite: bool):
        self.targets, self.to_stdout, self.overwrite = targets, to_stdout, overwrite
        self.written = self.raced = 0

    def __call__(self, cut, skips: Skips) -> None:
        if self.to_stdout:
            with writing("-"):
                _write_stdout(cut.image)
            self.written += 1
            return
        target = self.targets[cut.path]
        try:
            _save(target, cut.image, replace=self.overwrite)
            self.written += 1
        except FileExistsError:  # another run wrote it meanwhile: kept, as one there before
            self.raced += 1
        except OSError as exc:
            if exc.errno in PLACE_FAILED:  # every next cut-out would fail the same way
                raise InputError(
                    f"{cannot_write(exc, target)}; the {self.written} cut-out(s) written are kept: "
                    f"run the same command again to continue"
                ) from None
            skips.add(
                ImageError(cut.path, f"not written ({exc.strerror or exc})", Problem.NOT_WRITTEN),
                said=f"{cut.path}: cannot write {target} ({exc.strerror or exc})",
            )


def _is_terminal(stream) -> bool:
    return stream is not None and stream.isatty()


def _remove_stale_temporaries(folders) -> None:
    """Temporary files that a killed run (SIGKILL) left where this one writes."""
    from carmask.files import remove_stale_temporaries

    for folder in sorted(folders):
        removed = remove_stale_temporaries(folder)
        if removed:
            info(f"removed {removed} temporary file(s) that a killed run left in {shown(folder)}")


def _cutouts(photos, todo, stdin, predictor, back, refine):
    """Every cut-out of the sets that hold a photo to do, streamed."""
    from carmask.cutout import remove_set, remove_sets
    from carmask.kaggle import group_by_car

    if stdin:
        return remove_set([("-", click.get_binary_stream("stdin").read())], predictor, back, refine=refine)
    sets = [s for s in group_by_car(photos) if any(p in todo for p in s.paths)]
    return remove_sets(sets, predictor, back, refine=refine)


def _names_image(output: str) -> bool:
    """-o names one image file (out.png), not a folder (out/, out.png/)."""
    return Path(output).suffix.lower() in WRITTEN_SUFFIXES and not output.endswith(("/", os.sep))


def _check_image_suffix(output: str) -> None:
    """-o out.gif (or .tif, .bmp) named an image that cutout does not write: it became a folder of that name."""
    from PIL import Image

    suffix = "" if output.endswith(("/", os.sep)) else Path(output).suffix.lower()
    if suffix in Image.registered_extensions() and suffix not in WRITTEN_SUFFIXES and not Path(output).is_dir():
        raise click.BadParameter(
            f"{output}: cut-outs are written as {', '.join(WRITTEN_SUFFIXES)}; name such a file, or a folder",
            param_hint="-o",
        )


def _less_earlier_outputs(photos: list[Path], output: str, background) -> list[Path]:
    """The photos, less the cut-outs an earlier run made of the others: images
    under the output folder, named as another photo's output, that carmask
    made (`_made_here`; a rerun with -r and -o inside the inputs cut out the
    cut-outs, and a user's own car.png beside car.jpg was taken for one)."""
    folder = Path(output)
    if output == "-" or not folder.is_dir():
        return photos
    suffix = _suffix(background)
    own = {photo: {photo.stem + suffix, photo.name + suffix} for photo in photos}
    made = Counter(name for names in own.values() for name in names)
    here = folder.resolve()
    earlier = {
        p
        for p in photos
        if made[p.name] > (p.name in own[p])  # the cheap test first
        and _within(p.parent.resolve(), here)
        and _made_here(p)
    }
    if earlier:
        info(
            f"left out {len(earlier)} image(s) in {output} made by an earlier run: "
            f"{some(sorted(shown(p.name) for p in earlier))}"
        )
    return [p for p in photos if p not in earlier]


def _within(folder: Path, top: Path) -> bool:
    return folder == top or top in folder.parents


def _suffix(background) -> str:
    """Of an output: _mask.png for masks, .png for transparent, .jpg over a colour or an image."""
    return (
        "_mask.png"
        if isinstance(background, str) and background == "mask"
        else ".png"
        if isinstance(background, str)
        else ".jpg"
    )


def output_names(photos: list[Path], folder: Path, background) -> dict[Path, Path]:
    """Each photo's output under `folder`: <stem>.png, .jpg over a colour or an
    image, <stem>_mask.png for masks, in the sub-folder the photo has below
    the photos' common folder (none when they share one). Photos that would
    share a name use their full name (car_01.jpg.png) and, if still shared,
    -2, -3... in input order."""
    suffix = _suffix(background)
    common = os.path.commonpath([os.path.abspath(p.parent) for p in photos]) if photos else ""
    places = [folder / os.path.relpath(os.path.abspath(p.parent), common) for p in photos]
    stems = Counter((place, p.stem) for place, p in zip(places, photos))
    taken: Counter[tuple[Path, str]] = Counter()
    out = {}
    for photo, place in zip(photos, places):
        name = photo.stem if stems[(place, photo.stem)] == 1 else photo.name
        taken[(place, name)] += 1
        unique = name if taken[(place, name)] == 1 else f"{name}-{taken[(place, name)]}"
        out[photo] = place / f"{unique}{suffix}"
    return out


def summary(written: int, kept: int, where) -> str:
    return f"wrote {written} cut-out(s) to {where}" + (
        f"; kept {kept} existing (--overwrite replaces them)" if kept else ""
    )


def _save(path: Path, image, replace: bool) -> None:
    """A cut-out, marked as carmask's; an existing file is replaced only if
    `replace` (else FileExistsError: another run wrote it meanwhile)."""
    from carmask.io import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(path, image, replace=replace, exif=_mark())


def _mark():
    """EXIF Software = carmask: what tells a cut-out from a photo (PNG, JPEG, WebP alike)."""
    from PIL import Image

    exif = Image.Exif()
    exif[SOFTWARE_TAG] = SOFTWARE
    return exif


def _made_here(path: Path) -> bool:
    """Whether carmask made the image at `path` (its mark, read from the header)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return str(image.getexif().get(SOFTWARE_TAG, "")).startswith("carmask")
    except Exception:  # unreadable: not ours; it is named when it is read as a photo
        return False


def _write_stdout(image) -> None:
    from carmask.files import binary_stdout, write_all
    from carmask.io import image_bytes

    data = image_bytes(image, "png", exif=_mark())
    stream = binary_stdout()
    write_all(stream, data)
    stream.flush()

"""`carmask predict`: a Kaggle submission CSV for photos."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import click

from carmask.cli.common import (
    InputError,
    cannot_write,
    check_output,
    detail,
    find_inputs,
    info,
    interrupted,
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
    size_option,
)
from carmask.cli.outcomes import some
from carmask.files import remove_stale_temporaries
from carmask.outcomes import ImageError, Problem


@main.command(short_help="Write a Kaggle submission CSV for photos.")
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="FILE",
    help="Submission CSV to write (img,rle_mask), or - for stdout (then not resumable).",
)
@recursive_option
@prediction_options
@size_option
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing output, and start afresh instead of continuing an interrupted run.",
)
@click.option(
    "--compile",
    "compile_model",
    is_flag=True,
    help="torch.compile the model (CUDA graphs on a GPU): slower start, faster on large runs.",
)
@click.option(
    "--engine",
    default="local",
    show_default=True,
    type=click.Choice(["local", "ray"]),
    help="local: this process; ray: a pool of actors on a Ray cluster (carmask[ray]).",
)
@click.option(
    "--ray-address",
    envvar="RAY_ADDRESS",
    metavar="ADDRESS",
    help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray instance).",
)
@click.option(
    "--actors", type=click.IntRange(min=1), help="Ray actors, one model each (default: one per GPU, else one per CPU)."
)
@verbosity_options
def predict(
    inputs,
    output,
    recursive,
    model,
    refiner,
    output_size,
    tta,
    sets,
    device,
    batch_size,
    overwrite,
    compile_model,
    engine,
    ray_address,
    actors,
):
    """Predict a mask for every photo in INPUTS (files, folders, globs) and
    write a Kaggle submission CSV.

    Masks are on each photo's stored pixel grid, as Kaggle's masks are and as
    it scores them (--output-size too): a photo whose EXIF orientation says
    to turn it is predicted upright and its mask turned back (a warning names
    such photos; carmask cutout gives them upright).

    Resumable: if a run is interrupted, run the same command again; it goes on
    only if the photos, the model and the options that change rows (output
    size, --tta, --sets, the device) are the same (--overwrite starts afresh).
    A second run on the same output refuses while one runs. Each skipped photo
    is named on stderr, and each car not predicted as its names suggest.
    """
    photos = find_inputs(inputs, recursive)
    nameless = _without_row_names(photos)  # skipped, and said so when the run starts
    photos = [photo for photo in photos if photo not in nameless]
    _refuse_shared_names(photos)
    if output != "-":
        refuse_replacing_inputs({photo: Path(output) for photo in photos})
        check_output(output, overwrite=True)  # whether it may be replaced: the writer decides, locked
        remove_stale_temporaries(Path(output).parent)  # of a run record a killed run was writing
    check_model(model)
    check_refiner(refiner, model, device)
    # Masks on the stored pixel grid (Kaggle's convention); the network sees the photos upright.
    options = dict(tta=tta, sets=sets, upright=False, refiner=refiner)
    if engine == "ray":
        predictor = _ray_predictor(model, device, batch_size, actors, ray_address, **options)
    else:
        predictor = make_predictor(model, device, batch_size, compile_model, **options)
    from carmask.predict import network_batch
    from carmask.submission import refiner_record

    with predictor:  # either engine: its threads, or the Ray instance it started, end with the run
        # The writer before any work: a refusal (output there, in use, another run's) comes first.
        writer = _open_writer(
            output,
            overwrite,
            photos,
            model,
            output_size=output_size,
            tta=tta,
            sets=sets,
            refiner=refiner_record(refiner, model, predictor.device),
            device=predictor.device.type,
            network_batch=network_batch(predictor.device, batch_size),
        )
        try:
            _write_submission(predictor, writer, photos, output, output_size, model, tta, nameless)
        except KeyboardInterrupt as exc:
            writer.close()  # what was predicted stays in the partial file for a resume
            interrupted(exc, _how_to_continue(writer, overwrite))
        except OSError as exc:  # a full disk, a closed pipe: one sentence, the rows kept
            writer.close()
            advice = _how_to_continue(writer, overwrite)
            raise InputError(cannot_write(exc, output) + (f"; {advice}" if advice else "")) from None
        except BaseException:
            writer.close()
            raise


def _how_to_continue(writer, overwrite: bool) -> str | None:
    """What continues an interrupted run: the same command (less --overwrite,
    which would start afresh), when rows were kept for it."""
    if writer.path is None or not writer.done:
        return None
    return (
        f"{_rows(len(writer.done))} kept in {writer.partial}; run the same command again"
        + (" without --overwrite" if overwrite else "")
        + " to continue"
    )


def _rows(count: int) -> str:
    return f"{count} row{'s' * (count != 1)}"


def _open_writer(output, overwrite, photos, model, **options):
    """The submission's writer; `options`: what changes rows, recorded for a resume."""
    from carmask.submission import OtherRun, OutputInUse, SubmissionWriter, run_record

    run = run_record(photos, model, **options)
    with writing(output):
        try:
            writer = SubmissionWriter(output, overwrite=overwrite, run=run)
        except (FileExistsError, OutputInUse, OtherRun) as exc:  # a sentence of its own
            raise InputError(str(exc)) from None
    if output == "-":
        info("writing the submission to stdout: an interrupted run cannot be resumed (-o FILE can)")
    elif writer.kept:
        info(f"resuming: {_rows(writer.kept)} already written")
    return writer


def _without_row_names(photos: list[Path]) -> dict[Path, Problem]:
    """The photos whose file name a submission row cannot hold, and why: a
    name that is no UTF-8 text (the CSV is), or that holds a line break (a row
    is a line)."""
    nameless = {}
    for photo in photos:
        try:
            photo.name.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are no UTF-8, as Python decodes file names
            nameless[photo] = Problem.NAME_NOT_TEXT
            continue
        if "\n" in photo.name or "\r" in photo.name:
            nameless[photo] = Problem.NAME_LINE_BREAK
    return nameless


def _refuse_shared_names(photos: list[Path]) -> None:
    """A row is named by the file name alone: two photos may not share one."""
    counts = Counter(p.name for p in photos)
    for name, count in counts.items():
        if count > 1:
            raise InputError(
                f"{count} photos named {name}: {some(str(p) for p in photos if p.name == name)} "
                f"(a submission row is named by the file name alone)"
            )


def _ray_predictor(model, device, batch_size, actors, address, **options):
    try:
        from carmask.ray_engine import RayPredictor

        return RayPredictor(model, device=device, batch_size=batch_size, actors=actors, address=address, **options)
    except (ImportError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None


def _write_submission(predictor, writer, photos, output, output_size, model, tta, nameless):
    """The submission from either engine: rows as they come, resumable, skips
    (`nameless`: photos a row cannot name, and why) and warnings named."""
    from carmask.kaggle import group_by_car

    run = Run("predicting")
    for photo, why in nameless.items():
        run.skips.add(
            ImageError(shown(photo), f"{why.value}, which a submission row cannot hold (rename the photo)", why)
        )
    sets = [s for s in group_by_car(photos) if not all(p.name in writer.done for p in s.paths)]
    todo = sum(len(s.paths) for s in sets)
    detail(
        f"{describe_predictor(model, predictor.device, tta)}; {todo} photo{'s' * (todo != 1)} "
        f"in {len(sets)} set{'s' * (len(sets) != 1)} to predict"
    )
    turned = _TurnedPhotos(photos)  # beside the prediction, in a thread of its own

    def write(prediction) -> None:
        if prediction.path.name not in writer.done:
            writer.write(prediction.path.name, prediction.runs)

    run.over(predictor.predict_sets(sets, output_size=output_size, encode=True), todo, write)
    writer.flush()
    if writer.done:
        writer.finish()
        kept = f", {writer.kept} kept from the interrupted run" if writer.kept else ""
        info(
            f"wrote {'stdout' if output == '-' else output}: {_rows(len(writer.done))} "
            f"({writer.written} predicted now{kept})"
        )
    else:
        writer.discard()
    run.end(turned.report(), nothing=None if writer.done else "no photo could be predicted: nothing written")


class _TurnedPhotos(threading.Thread):
    """Finds, beside the prediction, the photos whose EXIF orientation turns or
    mirrors them (2-8): viewers show them turned, while their masks are on the
    stored pixel grid. About 60 us a photo, from the file's header."""

    def __init__(self, photos: list[Path]):
        super().__init__(name="carmask-exif", daemon=True)
        self.photos, self.turned = photos, {}
        self.start()

    def run(self) -> None:
        from PIL import Image

        from carmask.io import orientation

        for path in self.photos:
            if not path.is_file():  # opening a pipe would wait forever; its prediction names it
                continue
            try:
                with Image.open(path) as image:
                    turn = orientation(image)
            except Exception:  # an unreadable photo is named when it is predicted
                continue
            if turn != 1:
                self.turned[path.name] = turn

    def report(self) -> str | None:
        """The warning that names them, if any (when the thread is done)."""
        self.join()
        if not self.turned:
            return None
        named = some(f"{name}: {orientation}" for name, orientation in self.turned.items())
        return (
            f"{len(self.turned)} photo(s) with an EXIF orientation that turns them ({named}): predicted "
            f"upright, their masks are on the stored pixel grid, as Kaggle's, not turned as viewers show "
            f"the photos"
        )

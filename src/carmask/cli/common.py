"""What the verbs share: the command group, common options, messages, output
checks and the exit status.

Every verb should:
- find its photos with `find_inputs` (files, folders, globs, `-r`; a missing
  name or no photo at all is an `InputError`);
- check each output before any work with `check_output` ("-" is stdout where
  the verb allows it), and write inside `writing(...)`, which turns an OSError
  into a sentence;
- talk on stderr through `info` (hidden by --quiet), `detail` (shown by
  --verbose) and `fail` (always), which never glue onto a progress bar;
- if it predicts, go over its outcomes with `cli.loop.Run` (the progress bar,
  notes once per car, skips counted by kind, the speed, the exit status),
  and say itself what it wrote and kept;
- exit 0 when done, 1 when some inputs were skipped (each named), 2 on a usage
  or input error (`InputError`, click's UsageError), 128 + the signal's number
  when stopped by Ctrl-C, SIGTERM or SIGHUP (130, 143, 129): `EXIT_STATUS`,
  shown in every verb's --help. SIGTERM and SIGHUP raise `Interrupted`, a
  KeyboardInterrupt, so that whatever cleans up after Ctrl-C cleans up after
  them too; a verb that says more ("run it again to continue") calls
  `interrupted(exc, advice)`.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import click

from carmask import __version__
from carmask.inputs.spec import MIN_VIEWS

EXIT_STATUS = """\b
Exit status:
  0    done
  1    done, but some inputs were skipped (each is named on stderr)
  2    usage or input error: a bad option, no photos, an output that
       cannot be written
  130  interrupted (Ctrl-C)
  143  stopped by SIGTERM (129: by SIGHUP), as by Ctrl-C"""

QUIET, NORMAL, VERBOSE = -1, 0, 1
_VERBOSITY = "carmask.verbosity"


# -- exit status and errors ------------------------------------------------------
class InputError(click.ClickException):
    """Exit 2 with a sentence: the command cannot run on what it was given."""

    exit_code = 2

    def show(self, file=None) -> None:
        fail(self.format_message())


class Verb(click.Command):
    """A carmask verb: its --help ends with the exit status."""

    def __init__(self, *args, epilog: str | None = None, **kwargs):
        super().__init__(*args, epilog=f"{epilog}\n\n{EXIT_STATUS}" if epilog else EXIT_STATUS, **kwargs)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP, raised in the main thread as Python raises
    KeyboardInterrupt for Ctrl-C, so that one path cleans up after all three."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _stopping_signals():
    """While a verb runs, Ctrl-C, SIGTERM and SIGHUP raise `Interrupted`. One
    that comes while the verb cleans up after the first is let pass: the
    cleanup is one batch at most, and cut short it left rows unwritten and a
    thread in torch, which aborted Python. A signal the caller ignores (nohup:
    SIGHUP; a background job: Ctrl-C) stays ignored."""
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return
    stopping: list[int] = []

    def stop(signum, frame) -> None:
        if not stopping:
            stopping.append(signum)
            raise Interrupted(signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # Stopped by one: the process is ending, and another now (a second
            # Ctrl-C) would only break the interpreter's shutdown with a traceback.
            signal.signal(signum, signal.SIG_IGN if stopping else handler)


@contextmanager
def default_signals():
    """Python's own handling of Ctrl-C, SIGTERM and SIGHUP inside a verb, for a
    server that takes the signals itself (uvicorn: the first drains, a second
    quits) and re-raises them when it stops. A signal ignored stays ignored."""
    defaults = {
        signal.SIGINT: signal.default_int_handler,
        signal.SIGTERM: signal.SIG_DFL,
        signal.SIGHUP: signal.SIG_DFL,
    }
    previous = {
        signum: signal.signal(signum, handler)
        for signum, handler in defaults.items()
        if signal.getsignal(signum) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def interrupted(exc: KeyboardInterrupt, advice: str | None = None) -> NoReturn:
    """Say that the verb was stopped (and `advice`: what continues it), and exit
    with 128 + the signal's number (130 for Ctrl-C, 143 SIGTERM, 129 SIGHUP)."""
    signum = getattr(exc, "signum", signal.SIGINT)
    by = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
    fail(f"interrupted{by}" + (f": {advice}" if advice else ""))
    sys.exit(128 + signum)


class Carmask(click.Group):
    command_class = Verb

    def invoke(self, ctx):
        """Ctrl-C, SIGTERM and SIGHUP end any verb with a sentence and 128 + the
        signal's number (click's own for Ctrl-C: "Aborted!", 1)."""
        try:
            with _stopping_signals():
                return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            interrupted(exc)


# -- messages and progress -------------------------------------------------------
def verbosity() -> int:
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(_VERBOSITY, NORMAL) if ctx else NORMAL


def _setter(level):
    def callback(ctx, param, value):
        if value:
            ctx.meta[_VERBOSITY] = level

    return callback


def verbosity_options(command):
    """-q/--quiet and -v/--verbose, for the group and for any verb."""
    command = click.option(
        "-v",
        "--verbose",
        is_flag=True,
        expose_value=False,
        callback=_setter(VERBOSE),
        help="Say more: the model, the device, the sets, the speed.",
    )(command)
    return click.option(
        "-q",
        "--quiet",
        is_flag=True,
        expose_value=False,
        callback=_setter(QUIET),
        help="Only errors and skipped inputs on stderr; no progress bar.",
    )(command)


def _say(text: str) -> None:
    """A line on stderr, through tqdm (which clears a progress bar first, then
    redraws it below). A stderr that cannot take it (closed: 2>&-; full:
    2>/dev/full) loses the line, never the run; and the line never goes to
    stdout, tqdm's fallback, where a submission may be going."""
    from tqdm import tqdm

    if sys.stderr is None:
        return
    try:
        tqdm.write(_undecoded_bytes_shown(text), file=sys.stderr)
        sys.stderr.flush()
    except OSError:
        _let_go(sys.stderr)


def _undecoded_bytes_shown(text: str) -> str:
    """Bytes of a file name that are no UTF-8 (which Python decodes to lone
    surrogates) as \\xe9, as `ls -b` shows them."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name has
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def shown(path) -> str:
    """A path in a message, on one line: its bytes that are no UTF-8 as \\xe9,
    a line break or other control character as its escape (a\\nb.jpg)."""
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in _undecoded_bytes_shown(str(path))
    )


def fail(message: str) -> None:
    """An error or a skipped input: always said."""
    _say(f"carmask: {message}")


def warn(message: str) -> None:
    """Something the user should know about a result: said unless --quiet."""
    if verbosity() >= NORMAL:
        _say(f"carmask: warning: {message}")


def info(message: str) -> None:
    """What was done: said unless --quiet."""
    if verbosity() >= NORMAL:
        _say(message)


def detail(message: str) -> None:
    """How it was done: said with --verbose."""
    if verbosity() >= VERBOSE:
        _say(message)


def progress(total: int, desc: str, unit: str = "photo"):
    """A tqdm bar on stderr, shown only on a terminal and without --quiet."""
    from tqdm import tqdm

    shown = verbosity() >= NORMAL and getattr(sys.stderr, "isatty", lambda: False)()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not shown, dynamic_ncols=True)


# -- inputs and outputs ----------------------------------------------------------
def find_inputs(inputs, recursive: bool = False) -> list[Path]:
    """The photos named on the command line: files, folders and globs (`-r`: in
    sub-folders too). A name that is nothing, or no photo at all, is an InputError."""
    from carmask.io import find_photos

    missing = [str(i) for i in inputs if not any(ch in str(i) for ch in "*?[") and not os.path.lexists(i)]
    if missing:
        raise InputError(f"no such file or folder: {', '.join(missing)}")
    photos = find_photos(inputs, recursive=recursive)
    if not photos:
        folders = [Path(i) for i in inputs if Path(i).is_dir()]
        deeper = not recursive and any(p.is_dir() for folder in folders for p in folder.iterdir())
        hint = " (-r looks in sub-folders)" if deeper else ""
        raise InputError(f"no photos found in {' '.join(map(str, inputs))}{hint}")
    return photos


def check_output(path, *, folder: bool = False, overwrite: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written: an existing
    one without --overwrite (a folder only if it holds files), a file where a
    folder is needed or the reverse, a missing folder to write a file into
    (folders are created, with their parents), a place without write access."""
    if not folder and str(path).endswith(("/", os.sep)):  # Path() would drop the slash and write a file
        raise InputError(f"{path} names a folder (it ends with {str(path)[-1]}); name the file to write")
    path = Path(path)
    if path.exists():
        _refuse_existing(path, folder, overwrite)
    where = path if folder and path.is_dir() else path.parent  # an existing folder is written into
    while folder and not where.exists() and where != where.parent:
        where = where.parent
    if not where.exists():
        for above in [where, *where.parents]:
            if above.exists() and not above.is_dir():
                raise InputError(f"cannot write {path}: {above} is not a folder")
        raise InputError(f"cannot write {path}: folder {where} does not exist")
    if not where.is_dir():
        raise InputError(f"cannot write {path}: {where} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as exc:
        raise InputError(f"cannot write in {where}: {exc.strerror or exc}") from None


def _refuse_existing(path: Path, folder: bool, overwrite: bool) -> None:
    if not (path.is_dir() or path.is_file()):  # a device, a pipe: replacing it would break the system
        raise InputError(f"{path} is not a regular file" + ("" if folder else "; name a file to write"))
    if folder and not path.is_dir():
        raise InputError(f"{path} is a file, not a folder")
    if not folder and path.is_dir():
        raise InputError(f"{path} is a folder; name the file to write")
    if not overwrite and (not folder or any(path.iterdir())):
        raise InputError(f"{path} exists; pass --overwrite to replace it")


def refuse_replacing_inputs(targets: dict[Path, Path]) -> None:
    """An output never takes the place of a photo it is made from (-o onto an
    input, or cut-outs into the inputs' folder): `targets` maps photos to outputs."""
    for photo, target in targets.items():
        if target.exists() and photo.exists() and os.path.samefile(photo, target):
            raise InputError(f"{target} is one of the input photos: the output would replace it; choose another -o")


@contextmanager
def writing(path):
    """An OSError while writing `path` becomes a sentence (exit 2)."""
    try:
        yield
    except OSError as exc:
        raise InputError(cannot_write(exc, path)) from None


def cannot_write(exc: OSError, path) -> str:
    """'cannot write PATH: reason', for an OSError met while writing `path`
    (the file it names, if any; "-": standard output, then let go)."""
    where = exc.filename if exc.strerror and exc.filename else path
    if str(where) == "-":
        where = "standard output"
        _let_go(sys.stdout)
    return f"cannot write {where}: {exc.strerror or exc}"


def _let_go(stream) -> None:
    """A standard stream that failed, to /dev/null: what stayed in its buffer
    would fail again, with a traceback and exit status 120, when Python exits."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (OSError, ValueError, AttributeError):  # none there, or not a file (tests)
        pass


def result(text: str) -> None:
    """A result line on stdout; a stdout that cannot take it (a full disk, a
    closed pipe, none: >&-) is a sentence, not a traceback nor silence."""
    from carmask.files import binary_stdout

    with writing("-"):
        binary_stdout()  # click.echo says nothing where there is no stdout
        click.echo(text)
        sys.stdout.flush()


@click.group(
    cls=Carmask,
    epilog=EXIT_STATUS,
    context_settings={"help_option_names": ["-h", "--help"]},
    help=f"""Remove the studio background from car photos.

    Photos named <car>_<NN>.jpg (Kaggle Carvana layout) are grouped by car:
    a set of at least {MIN_VIEWS} views that share a studio is predicted with the car's
    median background, other photos one by one (--sets).
    """,
)
@click.version_option(__version__, prog_name="carmask")
@verbosity_options
def main():
    """The command group: `carmask VERB ...` (its help is built above, from MIN_VIEWS)."""

"""Helpers shared by test modules (pytest puts this folder on the import path)."""
import itertools

import pytest
from click.testing import CliRunner

from carmask.cli import main


def run_cli(*args, input=None):
    """`carmask ARGS...` in this process; an exception other than an exit propagates."""
    result = CliRunner().invoke(main, [str(a) for a in args], input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def interrupted_run(after_rows, *args):
    """`carmask predict ARGS...` stopped as Ctrl-C stops it, once `after_rows`
    rows were handed to the writer: what a killed run leaves behind."""
    from carmask.submission import SubmissionWriter
    write, count = SubmissionWriter.write, itertools.count(1)

    def write_then_stop(self, img, rle):
        write(self, img, rle)
        if next(count) >= after_rows:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SubmissionWriter, "write", write_then_stop)
        result = run_cli(*args)
    assert result.exit_code == 130, result.output
    return result


def partial_of(out):
    """The in-progress file of the submission `out`."""
    return out.with_name(out.name + ".partial")

"""Helpers shared by test modules (pytest puts this folder on the import path)."""
from click.testing import CliRunner

from carmask.cli import main


def run_cli(*args):
    """`carmask ARGS...` in this process; an exception other than an exit propagates."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result

"""What every verb shares: exit status in --help, progress only on a terminal,
messages never glued to a bar."""
import io
import sys

import pytest

from carmask.cli import main
from helpers import run_cli


@pytest.mark.parametrize("verb", [None, *sorted(main.commands)])
def test_help_documents_the_exit_status(verb):
    result = run_cli(*([verb] if verb else []), "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Exit status: 0 done" in text
    assert "1 done, but some inputs were skipped" in text and "2 usage or input error" in text


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_messages_start_on_their_own_line_under_a_progress_bar(monkeypatch):
    from carmask.cli.common import fail, progress
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress(10, "testing") as bar:
        bar.update(3)
        fail("skipped x.jpg: not a readable image")
        bar.update(7)
    text = terminal.getvalue()
    assert "testing" in text  # a bar on a terminal
    before, _, _ = text.partition("carmask: skipped x.jpg")
    assert before.endswith(("\r", "\n"))  # the bar was cleared first, not glued to


def test_no_progress_off_a_terminal(monkeypatch):
    from carmask.cli.common import progress
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with progress(10, "testing") as bar:
        bar.update(10)
    assert stream.getvalue() == ""

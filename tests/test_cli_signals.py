"""Ctrl-C, SIGTERM and SIGHUP sent to a real `carmask predict` or `cutout`:
the same cleanup, a sentence, 128 + the signal's number, no temporary file
left, and a rerun that finishes the very files an uninterrupted run writes."""

import signal

import pytest
from helpers import partial_of, run_cli, signalled_run

pytestmark = pytest.mark.slow  # the quick run (-m "not slow") leaves this module out

MODEL = ("--model", "seed", "--device", "cpu")
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@pytest.fixture(scope="module")
def photos(small_cars):
    """Four small synthetic cars of 16 views (96x64); `full`: conftest's."""
    return small_cars(4, seed=5) / "train"


def files(folder):
    """Every file under `folder`, hidden ones too, with its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def said(signum):
    return "interrupted" if signum == signal.SIGINT else f"interrupted by {signal.Signals(signum).name}"


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signalled_predict_keeps_its_rows_and_the_rerun_gives_the_uninterrupted_file(photos, full, tmp_path, signum):
    out = tmp_path / "s.csv"
    status, stderr = signalled_run(signum, 20, "predict", photos, "-o", out, *MODEL)
    assert status == 128 + signum, stderr
    assert (
        f"carmask: {said(signum)}: 20 rows kept in {partial_of(out)}; run the same command again to continue" in stderr
        and "Traceback" not in stderr
    )
    assert len(partial_of(out).read_text().splitlines()) == 21  # the header and every row handed out
    result = run_cli("predict", photos, "-o", out, *MODEL)
    assert result.exit_code == 0 and "resuming: 20 rows" in result.stderr
    assert out.read_bytes() == (full / "full.csv").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv"]


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signalled_cutout_leaves_no_temporary_file_and_the_rerun_gives_the_same_pngs(photos, full, tmp_path, signum):
    out = tmp_path / "cut"
    status, stderr = signalled_run(signum, 20, "cutout", photos, "-o", out, *MODEL)
    assert status == 128 + signum, stderr
    assert stderr.strip().endswith(f"carmask: {said(signum)}") and "Traceback" not in stderr
    assert len(files(out)) == 20  # the cut-outs written, and nothing else
    result = run_cli("cutout", photos, "-o", out, *MODEL)
    assert result.exit_code == 0 and "kept 20 existing" in result.stderr
    assert files(out) == files(full / "cut")


def test_ctrl_c_while_the_finishing_thread_works_ends_in_130_not_an_abort(photos, tmp_path):
    """The finishing thread was left in torch work when Python exited: "terminate
    called without an active exception", SIGABRT, 134."""
    status, stderr = signalled_run(signal.SIGINT, 1, "cutout", photos, "-o", tmp_path / "cut", *MODEL, busy=True)
    assert status == 130 and "terminate called" not in stderr, stderr


def test_the_advice_after_an_interrupted_overwrite_continues_the_run(photos, full, tmp_path):
    """`predict ... --overwrite` interrupted said "run the same command again",
    which started afresh and threw the rows away."""
    out = tmp_path / "s.csv"
    out.write_text("an earlier submission")
    status, stderr = signalled_run(signal.SIGINT, 20, "predict", photos, "-o", out, *MODEL, "--overwrite")
    assert status == 130 and "run the same command again without --overwrite to continue" in stderr, stderr
    result = run_cli("predict", photos, "-o", out, *MODEL)
    assert result.exit_code == 0 and "resuming: 20 rows" in result.stderr, result.stderr
    assert out.read_bytes() == (full / "full.csv").read_bytes()

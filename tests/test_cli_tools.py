"""`carmask models`, `export` and `synth` with the habits of the other verbs:
sentences for bad paths, exit statuses, messages on stderr, -q; Ctrl-C is
exit 130 in every verb."""

import pytest
from helpers import run_cli


@pytest.mark.parametrize(
    "args, where, says",
    [
        (
            ("export", "seed", "-o"),
            "missing/out",
            "cannot write {tmp}/missing/out: folder {tmp}/missing does not exist",
        ),
        (("export", "seed", "-o"), "file/out", "cannot write {tmp}/file/out: {tmp}/file is not a folder"),
        (("synth",), "file/out", "cannot write {tmp}/file/out: {tmp}/file is not a folder"),
        (("synth",), "file", "{tmp}/file is a file, not a folder"),
    ],
)
def test_an_output_that_cannot_be_written_is_a_sentence(tmp_path, args, where, says):
    (tmp_path / "file").write_text("")
    result = run_cli(*args, tmp_path / where)
    assert result.exit_code == 2, result.output
    assert says.format(tmp=tmp_path) in result.stderr and "Traceback" not in result.output


def test_export_keeps_an_existing_file_and_says_what_it_wrote(tmp_path):
    pytest.importorskip("onnx")
    out = tmp_path / "seed.onnx"
    out.write_text("mine")
    kept = run_cli("export", "seed", "-o", out)
    assert kept.exit_code == 2 and f"{out} exists; pass --overwrite" in kept.stderr
    assert out.read_text() == "mine"
    assert run_cli("export", "seed", "-o", tmp_path, "--overwrite").exit_code == 2  # a folder
    done = run_cli("export", "seed", "-o", out, "--overwrite")
    assert done.exit_code == 0 and done.stdout == "" and f"wrote {out}" in done.stderr
    quiet = run_cli("export", "seed", "-o", out, "--overwrite", "-q")
    assert quiet.exit_code == 0 and quiet.output == ""


def test_export_of_a_missing_model_is_a_sentence(tmp_path):
    result = run_cli("export", tmp_path / "nope.pt", "-o", tmp_path / "x.onnx")
    assert result.exit_code == 2 and "nope.pt" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.onnx").exists()


def test_synth_keeps_a_folder_that_holds_files(tmp_path):
    out = tmp_path / "data"
    first = run_cli("synth", out, "--cars", 1, "--views", 3, "--size", "48x32", "--test-cars", 0)
    assert first.exit_code == 0 and first.stdout == ""
    assert "wrote" in first.stderr and len(list((out / "train").iterdir())) == 3
    again = run_cli("synth", out, "--cars", 1, "--views", 3, "--size", "48x32", "--seed", 1)
    assert again.exit_code == 2 and f"{out} exists; pass --overwrite" in again.stderr
    assert len(list((out / "train").iterdir())) == 3
    assert (
        run_cli("-q", "synth", out, "--cars", 1, "--views", 3, "--size", "48x32", "--seed", 1, "--overwrite").output
        == ""
    )
    assert len(list((out / "train").iterdir())) == 6
    assert run_cli("synth", tmp_path / "none", "--cars", 0).exit_code == 2


def test_models_without_any_shipped_model_is_a_sentence(monkeypatch):
    monkeypatch.setattr("carmask.models.shipped", lambda: [])
    result = run_cli("models")
    assert result.exit_code == 2 and "no model is shipped" in result.stderr
    assert run_cli("models", "-q").exit_code == 2


def test_ctrl_c_ends_any_verb_with_exit_130(monkeypatch):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr("carmask.cli.models.rows", interrupted)
    result = run_cli("models")
    assert result.exit_code == 130 and result.stderr == "carmask: interrupted\n"


def test_synth_views_fit_two_digit_names(tmp_path):
    """A 100th view, named <car>_100.jpg, would not have been read as one of its car's views."""
    result = run_cli("synth", tmp_path / "s", "--views", "100")
    assert result.exit_code == 2 and "100 is not in the range 1<=x<=99" in result.output

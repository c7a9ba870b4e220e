"""`carmask predict` as a batch tool: one run's rows never mix with another's,
nothing is claimed that was not done, and errors are sentences."""

import json
import os
import shutil
import sys

import numpy as np
import pytest
from helpers import interrupted_run, partial_of, run_cli, unrelated_photos

from carmask.predictor.runner import CPU_NETWORK_BATCH
from carmask.submission import SubmissionWriter, read_submission
from carmask.synth import make_dataset

MODEL = ("--model", "seed", "--device", "cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two folders of two small synthetic cars each (16 views, 96x64)."""
    root = tmp_path_factory.mktemp("cars")
    for name, seed in (("a", 3), ("b", 4)):
        make_dataset(root / name, cars=2, size=(96, 64), seed=seed)
    return root


@pytest.fixture(scope="module")
def full(data, tmp_path_factory):
    """The uninterrupted submission of folder a."""
    out = tmp_path_factory.mktemp("full") / "full.csv"
    assert run_cli("predict", data / "a" / "train", "-o", out, *MODEL).exit_code == 0
    return out


@pytest.fixture
def photos(data, tmp_path):
    """A copy of folder a's photos that a test may change."""
    return shutil.copytree(data / "a" / "train", tmp_path / "photos")


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_overwrite_starts_afresh_instead_of_continuing_another_folders_run(data, tmp_path):
    out = tmp_path / "s.csv"
    interrupted_run(5, "predict", data / "a" / "train", "-o", out, *MODEL)
    result = run_cli("predict", data / "b" / "train", "-o", out, *MODEL, "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(read_submission(out)) == names(data / "b" / "train")


def test_a_resumed_run_gives_the_uninterrupted_file_and_says_what_it_kept(photos, full, tmp_path):
    out = tmp_path / "s.csv"
    interrupted_run(12, "predict", photos, "-o", out, *MODEL)
    lines = full.read_text().splitlines(keepends=True)
    with open(partial_of(out), "a") as f:
        f.write(lines[13][:20])  # killed in the middle of a row
    result = run_cli("predict", photos, "-o", out, *MODEL)
    assert result.exit_code == 0, result.output
    assert out.read_text() == full.read_text()
    assert "resuming: 12 rows" in result.stderr
    assert "32 rows (20 predicted now, 12 kept from the interrupted run)" in result.stderr
    assert not partial_of(out).exists() and set(tmp_path.iterdir()) == {photos, out}


@pytest.mark.parametrize(
    "change, expected",
    [
        (("--output-size", "48x32"), "output size was each photo's own, now 48x32"),
        (("--tta",), "tta was off, now on"),
        (("--model", "rgb"), "model was seed, now rgb"),
        (("--sets", "never"), "sets was auto, now never"),
        (("--refiner", "edge-refiner-fast"), "refiner was none, now edge-refiner-fast (sha256 "),
    ],
)
def test_a_rerun_with_other_settings_refuses_and_names_them(photos, tmp_path, change, expected):
    out = tmp_path / "s.csv"
    interrupted_run(5, "predict", photos, "-o", out, *MODEL)
    before = partial_of(out).read_bytes()
    result = run_cli("predict", photos, "-o", out, *MODEL, *change)
    assert result.exit_code == 2, result.output
    assert expected in result.stderr and "--overwrite" in result.stderr
    assert "Traceback" not in result.output
    assert partial_of(out).read_bytes() == before and not out.exists()


def test_a_rerun_on_another_device_refuses_and_names_it(photos, tmp_path):
    """The device changes rows (bfloat16 on a GPU): a run begun on one is not finished on another."""
    out = tmp_path / "s.csv"
    interrupted_run(5, "predict", photos, "-o", out, *MODEL)
    record = out.with_name(out.name + ".partial.json")
    assert json.loads(record.read_text())["device"] == "cpu"
    record.write_text(record.read_text().replace('"device": "cpu"', '"device": "cuda"'))
    result = run_cli("predict", photos, "-o", out, *MODEL)
    assert result.exit_code == 2 and "device was cuda, now cpu" in result.stderr


def test_a_rerun_on_changed_photos_refuses_and_names_them(photos, tmp_path):
    out = tmp_path / "s.csv"
    interrupted_run(5, "predict", photos, "-o", out, *MODEL)
    first, second, third = sorted(photos.iterdir())[:3]
    first.unlink()
    shutil.copy(second, photos / "newcar_01.jpg")
    os.utime(third, ns=(0, 0))
    result = run_cli("predict", photos, "-o", out, *MODEL)
    assert result.exit_code == 2, result.output
    for text in (f"1 photo removed ({first.name})", "1 photo added (newcar_01.jpg)", f"1 photo changed ({third.name})"):
        assert text in result.stderr


def test_an_in_progress_file_of_unknown_origin_is_not_trusted(photos, full, tmp_path):
    out = tmp_path / "s.csv"
    partial_of(out).write_text("img,rle_mask\nsomeone_else_01.jpg,1 2\n")
    result = run_cli("predict", photos, "-o", out, *MODEL)
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert run_cli("predict", photos, "-o", out, *MODEL, "--overwrite").exit_code == 0
    assert out.read_text() == full.read_text()


def test_a_second_run_on_the_same_output_refuses_at_once(photos, full, tmp_path):
    out = tmp_path / "s.csv"
    first = SubmissionWriter(out)  # another run, holding the output
    result = run_cli("predict", photos, "-o", out, *MODEL, "--overwrite")
    assert result.exit_code == 2, result.output
    assert "another carmask run is writing" in result.stderr
    first.close()
    assert run_cli("predict", photos, "-o", out, *MODEL, "--overwrite").exit_code == 0
    assert out.read_text() == full.read_text()


@pytest.mark.slow
def test_two_processes_at_once_give_one_whole_file(photos, full, tmp_path):
    out = tmp_path / "s.csv"
    command = [sys.executable, "-m", "carmask", "predict", str(photos), "-o", str(out), *MODEL]
    import subprocess

    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = sorted((run.wait(), run.stderr.read()) for run in runs)
    assert [code for code, _ in outcomes] == [0, 2], outcomes
    assert "another carmask run is writing" in outcomes[1][1] or "exists" in outcomes[1][1]
    assert out.read_text() == full.read_text()


def test_empty_input_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    out = tmp_path / "s.csv"
    result = run_cli("predict", tmp_path / "empty", "-o", out, *MODEL)
    assert result.exit_code == 2 and "no photos found" in result.stderr
    assert "-r looks" not in result.stderr  # no sub-folder to look in
    assert list(tmp_path.iterdir()) == [tmp_path / "empty"]


def test_a_missing_input_is_an_error(tmp_path):
    result = run_cli("predict", tmp_path / "nowhere", "-o", tmp_path / "s.csv", *MODEL)
    assert result.exit_code == 2 and f"no such file or folder: {tmp_path / 'nowhere'}" in result.stderr


def test_when_no_photo_can_be_read_nothing_is_published(tmp_path):
    (tmp_path / "junk").mkdir()
    for name in ("x_01.jpg", "y.jpg"):
        (tmp_path / "junk" / name).write_text("not a photo")
    out = tmp_path / "s.csv"
    result = run_cli("predict", tmp_path / "junk", "-o", out, *MODEL)
    assert result.exit_code == 1
    assert "2 photo(s) skipped: 2 not a readable image" in result.stderr
    assert "nothing written" in result.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "junk"]


def test_the_summary_counts_rows_and_skips_by_kind(photos, tmp_path):
    sorted(photos.iterdir())[3].write_bytes(b"")
    (photos / "notes_01.jpg").write_text("not a photo")
    result = run_cli("predict", photos, "-o", tmp_path / "s.csv", *MODEL)
    assert result.exit_code == 1
    assert "31 rows (31 predicted now)" in result.stderr
    assert "2 photo(s) skipped: 1 empty file, 1 not a readable image" in result.stderr


def test_files_globs_and_recursive_folders(data, tmp_path):
    tree = tmp_path / "tree"
    for name in ("a", "b"):
        shutil.copytree(data / name / "train", tree / name / "train")
    first = sorted((tree / "a" / "train").iterdir())[0]
    out = tmp_path / "s.csv"  # the shipped defaults: a single photo too
    assert run_cli("predict", first, tree / "b" / "train" / "*_0[1-3].jpg", "-o", out, "--device", "cpu").exit_code == 0
    assert sorted(read_submission(out)) == sorted(
        [first.name] + [f"synth004c00{car}_0{view}.jpg" for car in (0, 1) for view in (1, 2, 3)]
    )
    flat = run_cli("predict", tree, "-o", tmp_path / "flat.csv", *MODEL)
    assert flat.exit_code == 2 and f"no photos found in {tree} (-r looks in sub-folders)" in flat.stderr
    deep = run_cli("predict", tree, "-r", "-o", tmp_path / "deep.csv", *MODEL)
    assert deep.exit_code == 0, deep.output
    assert len(read_submission(tmp_path / "deep.csv")) == 64


def test_two_photos_with_one_name_refuse(data, tmp_path):
    one = sorted((data / "a" / "train").iterdir())[0]
    (tmp_path / "copy").mkdir()
    shutil.copy(one, tmp_path / "copy" / one.name)
    result = run_cli("predict", one, tmp_path / "copy" / one.name, "-o", tmp_path / "s.csv", *MODEL)
    assert result.exit_code == 2
    assert f"2 photos named {one.name}" in result.stderr


def test_dash_streams_the_submission_to_stdout(photos, full, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("predict", photos, "-o", "-", *MODEL)
    assert result.exit_code == 0, result.output
    assert result.stdout == full.read_text()
    assert "cannot be resumed" in result.stderr
    assert list(tmp_path.iterdir()) == [photos]


def test_tta_reaches_the_predictor(photos, tmp_path, monkeypatch):
    from carmask import predict

    seen = []
    init = predict.Predictor.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        seen.append(self.tta)

    monkeypatch.setattr(predict.Predictor, "__init__", spy)
    assert run_cli("predict", photos, "-o", tmp_path / "s.csv", *MODEL, "--tta").exit_code == 0
    assert seen == [True]


@pytest.mark.parametrize(
    "where, says",
    [
        ("missing/s.csv", "folder {tmp}/missing does not exist"),
        ("photos", "{tmp}/photos is a folder"),
        ("photos/synth003c000_01.jpg/s.csv", "{tmp}/photos/synth003c000_01.jpg is not a folder"),
    ],
)
def test_an_output_that_cannot_be_written_is_a_sentence(photos, tmp_path, where, says):
    result = run_cli("predict", photos, "-o", tmp_path / where, *MODEL)
    assert result.exit_code == 2, result.output
    assert says.format(tmp=tmp_path) in result.stderr and "Traceback" not in result.output


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs a read-only /sys")
def test_an_unwritable_place_is_a_sentence(photos):
    result = run_cli("predict", photos, "-o", "/sys/carmask-test.csv", *MODEL)
    assert result.exit_code == 2, result.output
    assert "cannot write in /sys" in result.stderr


@pytest.mark.slow
def test_quiet_and_verbose(photos, tmp_path):
    (photos / "notes_01.jpg").write_text("not a photo")
    quiet = run_cli("--quiet", "predict", photos, "-o", tmp_path / "q.csv", *MODEL)
    assert quiet.exit_code == 1
    lines = quiet.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"carmask: skipped {photos / 'notes_01.jpg'}: ")
    assert lines[1] == "carmask: 1 photo(s) skipped: 1 not a readable image"
    verbose = run_cli("predict", photos, "-o", tmp_path / "v.csv", *MODEL, "-v")
    assert "model seed on cpu" in verbose.stderr and "33 photos in 3 sets" in verbose.stderr
    normal = run_cli("predict", photos, "-o", tmp_path / "n.csv", *MODEL)
    assert "model seed on cpu" not in normal.stderr and "wrote" in normal.stderr
    assert "\r" not in normal.stderr and "photo/s" not in normal.stderr  # no bar off a terminal


@pytest.fixture(scope="module")
def mixed(data, tmp_path_factory):
    """What the names promise and the photos do not keep: three photos of
    three cars in three places named IMG_01..03 as if one car's views, a car
    with 2 views, and a whole car."""
    folder = tmp_path_factory.mktemp("mixed")
    unrelated_photos(folder, size=(96, 64))
    views = sorted((data / "a" / "train").iterdir())
    for view in views[:2] + views[16:]:  # synth003c000: 2 views; synth003c001: 16
        shutil.copy(view, folder / view.name)
    return folder


def test_cars_not_predicted_as_their_names_suggest_are_named_once_and_counted(mixed, tmp_path):
    result = run_cli("predict", mixed, "-o", tmp_path / "s.csv", "--device", "cpu")  # the shipped models
    assert result.exit_code == 0, result.output
    assert len(read_submission(tmp_path / "s.csv")) == 21
    warnings = [line for line in result.stderr.splitlines() if line.startswith("carmask: warning: ")]
    assert len(warnings) == 4, warnings  # once per car, not once per photo; then the summary
    assert "IMG_01.jpg, IMG_02.jpg, IMG_03.jpg: do not share one studio" in warnings[0]
    assert "synth003c000_01.jpg, synth003c000_02.jpg: car synth003c000 has 2 readable views" in warnings[1]
    assert warnings[2].endswith("1 car with views predicted photo by photo: IMG")
    assert warnings[3].endswith("1 car with views predicted photo by photo with the single-photo model: synth003c000")
    assert "warning" not in run_cli("-q", "predict", mixed, "-o", tmp_path / "q.csv", "--device", "cpu").stderr


def test_sets_always_trusts_the_names_and_never_takes_every_photo_alone(mixed, tmp_path):
    always = run_cli("predict", mixed, "-o", tmp_path / "always.csv", "--device", "cpu", "--sets", "always")
    assert always.exit_code == 0 and "do not share one studio" not in always.stderr
    never = run_cli("predict", mixed, "-o", tmp_path / "never.csv", "--device", "cpu", "--sets", "never")
    assert never.exit_code == 0 and "warning" not in never.stderr
    auto = run_cli("predict", mixed, "-o", tmp_path / "auto.csv", "--device", "cpu")
    rows = {name: read_submission(tmp_path / f"{name}.csv") for name in ("always", "auto", "never")}
    assert rows["auto"]["IMG_01.jpg"] == rows["never"]["IMG_01.jpg"] != rows["always"]["IMG_01.jpg"]
    whole = "synth003c001_05.jpg"  # a real set: the multi-view model, unless --sets never
    assert rows["auto"][whole] == rows["always"][whole] != rows["never"][whole]
    assert auto.exit_code == 0


def test_a_name_with_a_line_break_is_skipped_and_named_and_the_rest_predicted(photos, tmp_path):
    """The whole run was refused for one such name."""
    shutil.copy(sorted(photos.iterdir())[0], photos / "a\nb.jpg")
    out = tmp_path / "s.csv"
    result = run_cli("predict", photos, "-o", out, *MODEL)
    assert result.exit_code == 1, result.output
    assert (
        f"carmask: skipped {photos}/a\\nb.jpg: name holds a line break, which a submission row cannot "
        f"hold (rename the photo)"
    ) in result.stderr.splitlines()
    assert "1 photo(s) skipped: 1 name holds a line break" in result.stderr
    assert sorted(read_submission(out)) == sorted(p.name for p in photos.iterdir() if "\n" not in p.name)


@pytest.mark.slow
def test_a_name_that_is_no_utf8_is_skipped_and_named_and_the_rest_predicted(photos, tmp_path):
    """caf\\xe9.jpg: every photo predicted, then exit 2 'surrogates not allowed',
    a .partial left, and every rerun "resumed" and failed the same way."""
    import subprocess

    command = [sys.executable, "-m", "carmask", "predict", str(photos), "--device", "cpu", "-o"]
    assert subprocess.run([*command, str(tmp_path / "without.csv")]).returncode == 0
    os.link(sorted(photos.iterdir())[0], os.path.join(os.fsencode(photos), b"caf\xe9.jpg"))
    out = tmp_path / "s.csv"
    done = subprocess.run([*command, str(out)], capture_output=True)
    stderr = done.stderr.decode()  # UTF-8 throughout: the name's byte shown as \xe9
    assert done.returncode == 1, stderr
    assert (
        f"carmask: skipped {photos}/caf\\xe9.jpg: name not UTF-8 text, which a submission row cannot hold "
        f"(rename the photo)"
    ) in stderr.splitlines()
    assert "1 photo(s) skipped: 1 name not UTF-8 text" in stderr
    assert out.read_bytes() == (tmp_path / "without.csv").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "s.csv", "without.csv"]


def test_a_tier_as_the_model_predicts_and_names_the_models_it_picked(photos, tmp_path):
    """--model fast, as --help offers: a traceback from the run record ("'fast' is a tier")."""
    out = tmp_path / "s.csv"
    interrupted_run(5, "predict", photos, "-o", out, "--model", "fast", "--device", "cpu")
    record = json.loads(out.with_name(out.name + ".partial.json").read_text())
    assert record["model"]["name"] == "fast (multiview-fast, rgb-fast)"
    result = run_cli("predict", photos, "-o", out, "--model", "fast", "--device", "cpu")
    assert result.exit_code == 0 and "resuming: 5 rows" in result.stderr, result.output
    assert run_cli("predict", photos, "-o", tmp_path / "d.csv", "--device", "cpu").exit_code == 0
    assert out.read_bytes() == (tmp_path / "d.csv").read_bytes()  # the fast models are the shipped defaults


def test_a_submission_never_replaces_a_photo(tmp_path):
    from PIL import Image

    photo = tmp_path / "car.jpg"
    Image.new("RGB", (8, 8)).save(photo)
    before = photo.read_bytes()
    result = run_cli("predict", photo, "-o", photo, "--overwrite")
    assert result.exit_code == 2 and f"{photo} is one of the input photos" in result.stderr
    assert photo.read_bytes() == before


@pytest.mark.slow
def test_a_pipe_named_as_a_photo_is_skipped_not_waited_on(tmp_path):
    """A FIFO named x.jpg on the command line: reading it (and its EXIF) waited for a writer forever."""
    import subprocess

    pipe = tmp_path / "x.jpg"
    os.mkfifo(pipe)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "carmask", "predict", str(pipe), "-o", "-"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("carmask predict waited on a pipe")
    assert done.returncode == 1 and "x.jpg: not a regular file (a pipe or a device)" in done.stderr


def test_an_output_name_that_fits_gets_partial_and_temporary_names_that_fit_too(photos, full, tmp_path):
    """-o of 229+ bytes: 'File name too long' for the partial file's record
    (the name + 27 bytes), and a 0-byte .partial left."""
    out = tmp_path / ("é" * 120 + "s.csv")  # 246 bytes
    interrupted_run(12, "predict", photos, "-o", out, *MODEL)
    assert run_cli("predict", photos, "-o", out, *MODEL).exit_code == 0
    assert out.read_bytes() == full.read_bytes()
    assert sorted(tmp_path.iterdir()) == sorted([photos, out])


def test_sibling_names_fit_and_stay_one_name_for_one_path(tmp_path):
    from carmask.files import sibling

    long, other = tmp_path / ("é" * 125 + ".csv"), tmp_path / ("é" * 125 + ".CSV")
    names = [sibling(p, ".partial.json", prefix=".") for p in (long, long, other)]
    assert all(len(os.fsencode(n.name)) <= 255 for n in names)
    assert names[0] == names[1] != names[2] and names[0].parent == tmp_path
    assert sibling(tmp_path / "s.csv", ".partial") == tmp_path / "s.csv.partial"  # as ever where it fits


@pytest.mark.slow
def test_a_disk_that_fills_up_is_one_sentence_and_the_rows_stay_resumable(photos, tmpfs, tmp_path):
    """-o on a 64 KiB tmpfs: sometimes a traceback from writer.close(), exit 1."""
    from helpers import remount

    disk, size = tmpfs("64k"), ("--output-size", "1918x1280")  # rows of some 20 KB
    result = run_cli("predict", photos, "-o", disk / "s.csv", *MODEL, *size)
    assert result.exit_code == 2, result.output
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"carmask: cannot write {disk / 's.csv.partial'}: No space left on device; ")
    assert "rows kept in" in message and message.endswith("run the same command again to continue")
    assert "Traceback" not in result.output and not (disk / "s.csv").exists()
    remount(disk, "size=16m")
    resumed = run_cli("predict", photos, "-o", disk / "s.csv", *MODEL, *size)
    assert resumed.exit_code == 0 and "resuming: " in resumed.stderr, resumed.output
    assert run_cli("predict", photos, "-o", tmp_path / "whole.csv", *MODEL, *size).exit_code == 0
    assert (disk / "s.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert sorted(p.name for p in disk.iterdir()) == ["s.csv"]


def test_a_disk_too_full_for_the_first_row_leaves_nothing_behind(photos, tmpfs):
    """On 4 KiB: a 0-byte .partial and its .partial.json were left."""
    disk = tmpfs("4k")
    (disk / "filler").write_bytes(b"x" * 4096)
    result = run_cli("predict", photos, "-o", disk / "s.csv", *MODEL)
    assert result.exit_code == 2 and "No space left on device" in result.stderr, result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_a_full_disk_without_a_tmpfs_is_the_same_sentence(photos, tmp_path, monkeypatch):
    """Where no tmpfs can be mounted, a disk that fills up after some rows."""
    import errno

    from carmask import submission

    write_all, calls = submission.write_all, iter(range(1000))

    def filling(stream, data):
        if next(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write_all(stream, data)

    monkeypatch.setattr(submission, "write_all", filling)
    out = tmp_path / "s.csv"
    result = run_cli("predict", photos, "-o", out, *MODEL)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"cannot write {partial_of(out)}: No space left on device" in result.stderr
    assert not out.exists() and partial_of(out).exists()


def test_a_broken_link_or_a_pipe_in_a_folder_is_named_not_dropped(photos, tmp_path):
    """The submission was short by them, without a word."""
    os.symlink(tmp_path / "nowhere.jpg", photos / "gone_01.jpg")
    os.mkfifo(photos / "pipe.jpg")
    out = tmp_path / "s.csv"
    result = run_cli("predict", photos, "-o", out, *MODEL)
    assert result.exit_code == 1, result.output
    assert f"skipped {photos / 'gone_01.jpg'}: no such file" in result.stderr
    assert f"skipped {photos / 'pipe.jpg'}: not a regular file" in result.stderr
    assert "2 photo(s) skipped: 1 no such file, 1 not a regular file" in result.stderr
    assert len(read_submission(out)) == 32


@pytest.mark.slow
def test_results_do_not_depend_on_the_batch_size(data, tmp_path):
    """--batch-size 1 against 2-64: 1 pixel of 1 mask in 48 differed, 22 of 48
    cut-outs by 1 level (and a resumed run batches its photos otherwise)."""
    from carmask.io import find_photos
    from carmask.kaggle import group_by_car
    from carmask.predict import Predictor

    photos = find_photos([data / "a" / "train"])[:21]  # a whole car, and 5 views of another
    probs = {
        size: [
            p.probs for p in Predictor(device="cpu", batch_size=size, upright=False).predict_sets(group_by_car(photos))
        ]
        for size in (1, 5, 16)
    }
    for size in (5, 16):
        assert all(np.array_equal(a, b) for a, b in zip(probs[1], probs[size])), size
    for size in (1, 16):
        assert (
            run_cli("cutout", *photos, "-o", tmp_path / str(size), "--device", "cpu", "--batch-size", size).exit_code
            == 0
        )
    assert {p.name: p.read_bytes() for p in (tmp_path / "1").iterdir()} == {
        p.name: p.read_bytes() for p in (tmp_path / "16").iterdir()
    }


def test_a_rerun_with_another_network_batch_refuses_and_names_it(photos, tmp_path):
    """On a GPU the network takes --batch-size photos a call, and that changes rows."""
    out = tmp_path / "s.csv"
    interrupted_run(5, "predict", photos, "-o", out, *MODEL)
    record = out.with_name(out.name + ".partial.json")
    assert json.loads(record.read_text())["network_batch"] == CPU_NETWORK_BATCH  # on the CPU, whatever --batch-size
    record.write_text(record.read_text().replace(f'"network_batch": {CPU_NETWORK_BATCH}', '"network_batch": 16'))
    result = run_cli("predict", photos, "-o", out, *MODEL)
    assert result.exit_code == 2 and f"network batch was 16, now {CPU_NETWORK_BATCH}" in result.stderr


def test_a_resume_through_a_symlinked_folder_is_the_same_run(photos, full, tmp_path):
    """ "160 photos added ...; 160 photos removed", the same names both sides."""
    out = tmp_path / "s.csv"
    interrupted_run(12, "predict", photos, "-o", out, *MODEL)
    os.symlink(photos, tmp_path / "link")
    result = run_cli("predict", tmp_path / "link", "-o", out, *MODEL)
    assert result.exit_code == 0 and "resuming: 12 rows" in result.stderr, result.output
    assert out.read_bytes() == full.read_bytes()


def test_a_kaggle_named_car_with_one_view_is_said_as_one_with_two(data, tmp_path):
    """Two views got a warning, one view none."""
    one = sorted((data / "a" / "train").iterdir())[0]
    result = run_cli("predict", one, "-o", tmp_path / "s.csv", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (
        f"carmask: warning: {one.name}: car synth003c000 has 1 readable view, and a background needs 3: "
        f"predicted photo by photo with the single-photo model"
    ) in result.stderr.splitlines()
    assert "1 row (1 predicted now)" in result.stderr


def test_a_real_photo_stored_sideways_gets_its_upright_mask_turned_back(real_data, tmp_path):
    """EXIF orientation 6 on a real test photo: the model ran on the sideways
    photo (dice 0.55-0.70 against the upright prediction)."""
    from PIL import Image

    from carmask.io import read_photo
    from carmask.rle import decode

    photo = read_photo(real_data / "carvana-test-1918" / "test" / "0004d4463b50_01.jpg")
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(photo).save(folder / "upright.png")
    sideways = Image.fromarray(np.rot90(photo, 1).copy())  # stored a quarter anticlockwise: 6 turns it back
    exif = sideways.getexif()
    exif[0x0112] = 6
    sideways.save(folder / "sideways.png", exif=exif)
    out = tmp_path / "s.csv"
    assert run_cli("predict", folder, "-o", out, "--device", "cpu").exit_code == 0
    rows = read_submission(out)
    upright = decode(rows["upright.png"], (1280, 1918))
    assert np.array_equal(decode(rows["sideways.png"], (1918, 1280)), np.rot90(upright, 1))

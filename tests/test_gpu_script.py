"""benchmarks/gpu_train.py's checks of the packed parts, before any GPU time is spent."""

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
gpu_train = pytest.importorskip("gpu_train")


def pack(folder: Path, number: int, parts: int, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    manifest = {
        "part": number,
        "parts": parts,
        "cars": ["a"],
        "split": {"train": ["a"], "val": ["b"]},
        "files": {name: len(data) for name, data in files.items()},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_parts_are_checked_and_joined(tmp_path):
    one = pack(tmp_path / "part1", 1, 2, {"carvana-512/train/a_01.jpg": b"x" * 10})
    two = pack(tmp_path / "part2", 2, 2, {"carvana-512/train_masks/a_01_mask.gif": b"y" * 5})
    assert gpu_train.check_parts([one, two])["split"] == {"train": ["a"], "val": ["b"]}
    root = gpu_train.join([one, two], tmp_path / "joined")
    assert (root / "carvana-512" / "train" / "a_01.jpg").read_bytes() == b"x" * 10
    assert (root / "carvana-512" / "train_masks" / "a_01_mask.gif").is_symlink()
    gpu_train.check_parts([one], complete=False)  # the first call checks its part alone
    with pytest.raises(SystemExit, match=r"parts \[1\] given, the set has 2"):
        gpu_train.check_parts([one])
    with pytest.raises(SystemExit, match="missing .*part3/manifest.json: carry"):
        gpu_train.check_parts([one, two, tmp_path / "part3"])
    (one / "carvana-512" / "train" / "a_01.jpg").write_bytes(b"x")
    with pytest.raises(SystemExit, match="1 of its 1 files are missing or truncated, e.g. carvana-512/train/a_01.jpg"):
        gpu_train.check_parts([one, two])


def test_overrides_become_the_cards_command_flags():
    overrides = gpu_train.parse_set(["width=4", "size=64x64", "batch_size=8", "augment=false", "lr=1e-3"])
    assert gpu_train.cli_flags(overrides) == " --width 4 --size 64x64 --batch-size 8 --no-augment --lr 0.001"

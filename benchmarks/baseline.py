"""A previous commit of carmask beside this one, for benchmarks that compare the two in one run.

`worktree(ref)` checks `ref` out into a temporary git worktree and yields its
`src/` folder; `python_with(src)` is the environment that makes a child
process import that carmask instead of this one.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def worktree(ref: str):
    """The `src/` folder of `ref`, checked out in a temporary worktree (removed after)."""
    with tempfile.TemporaryDirectory(prefix="carmask-baseline-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(tree), ref], check=True)
        try:
            yield tree / "src"
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)


def python_with(src: Path) -> dict:
    """The environment for a child process that imports carmask from `src`."""
    return {**os.environ, "PYTHONPATH": str(src)}


def describe(ref: str) -> str:
    """`ref` as a short commit id and subject, for the report."""
    out = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%h %s", ref], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()

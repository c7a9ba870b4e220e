"""A training run's folder as both loops keep it (`carmask.train` and the edge
refiner's `carmask.train_refiner`): metrics.csv, a row an epoch, and last.pt,
what `--resume` continues from."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from carmask.files import atomic_write

METRICS_HEADER = "epoch,train_loss,val_loss,val_dice,lr,seconds\n"


def open_log(log: Path, epoch: int) -> None:
    """metrics.csv for a run at `epoch`: a header alone for a new run; for a
    resumed one, the rows after `epoch` dropped (a run stopped between an
    epoch's row and its last.pt trains that epoch again)."""
    if epoch == 0:
        log.write_text(METRICS_HEADER)
        return
    lines = log.read_text().splitlines(keepends=True) if log.exists() else []
    kept = lines[:1] + [
        line for line in lines[1:] if line.split(",", 1)[0].isdigit() and int(line.split(",", 1)[0]) <= epoch
    ]
    if kept != lines or not kept:
        atomic_write(log, lambda tmp: tmp.write_text("".join(kept) or METRICS_HEADER))


def log_epoch(log: Path, epoch: int, train_loss: float, val_loss: float, val_dice: float, optimizer, elapsed: float):
    """One metrics.csv row."""
    lr = optimizer.param_groups[0]["lr"]
    with open(log, "a", newline="") as f:
        csv.writer(f).writerow(
            [epoch, f"{train_loss:.5f}", f"{val_loss:.5f}", f"{val_dice:.5f}", f"{lr:.2e}", f"{elapsed:.1f}"]
        )


def save_last(path: Path, model, optimizer, epoch: int, best_dice: float, elapsed: float) -> None:
    """last.pt: what `--resume` continues from."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "best_dice": best_dice,
        "elapsed": elapsed,
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_last(path: Path, model, optimizer, map_location) -> tuple[int, float, float]:
    """last.pt into `model` and `optimizer`: (epoch, best dice, elapsed seconds)."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return state["epoch"], state["best_dice"], state["elapsed"]
    except Exception as exc:  # another run's file, a truncated one, another recipe's shapes
        raise ValueError(
            f"{path}: cannot resume from it ({str(exc).splitlines()[0]}); "
            f"train into a new folder, or delete it to start afresh"
        ) from None

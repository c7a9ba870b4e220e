"""Pictures a person would rather look at than read: curves, histograms, galleries."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from carmask.files import atomic_write  # noqa: E402
from carmask.inputs.resize import resize  # noqa: E402
from carmask.io import read_mask, read_photo  # noqa: E402
from carmask.kaggle import parse_view_name  # noqa: E402

MISSED = np.array([255, 40, 40])  # car pixels the model missed
FALSE = np.array([40, 120, 255])  # background the model called car


def _save(fig, path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_curves(metrics_csv, png) -> None:
    """Training curves from a metrics.csv: losses and validation dice by epoch."""
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epoch = [int(r["epoch"]) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(epoch, [float(r["train_loss"]) for r in rows], label="train")
    left.plot(epoch, [float(r["val_loss"]) for r in rows], label="validation")
    left.set(xlabel="epoch", ylabel="loss", title="Loss", yscale="log")
    left.legend()
    right.plot(epoch, [float(r["val_dice"]) for r in rows], color="tab:green", marker="o", ms=3)
    right.set(xlabel="epoch", ylabel="mean dice", title="Validation dice (held-out cars)")
    right.grid(alpha=0.3)
    _save(fig, png)


def write_evaluation_report(scores, folder) -> list[Path]:
    """dice.csv, a dice histogram, mean dice per view angle and a worst-case gallery."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = "img,dice\n" + "".join(f"{k},{v:.6f}\n" for k, v in sorted(scores.dice.items()))
    atomic_write(folder / "dice.csv", lambda tmp: tmp.write_text(lines))
    written = [folder / "dice.csv"]
    if not scores.dice:
        return written
    values = np.array(list(scores.dice.values()))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(values, bins=40, color="tab:blue")
    ax.set(xlabel="dice", ylabel="images", title=f"Dice per image (mean {values.mean():.4f}, n={len(values)})")
    _save(fig, folder / "dice_hist.png")
    written.append(folder / "dice_hist.png")
    by_view = defaultdict(list)
    for name, value in scores.dice.items():
        parsed = parse_view_name(name)
        if parsed:
            by_view[parsed[1]].append(value)
    if by_view:
        views = sorted(by_view)
        fig, ax = plt.subplots(figsize=(7, 3.6))
        ax.bar([f"{v:02d}" for v in views], [np.mean(by_view[v]) for v in views], color="tab:green")
        low = min(np.mean(by_view[v]) for v in views)
        ax.set(
            xlabel="view (turntable angle)",
            ylabel="mean dice",
            title="Mean dice per view",
            ylim=(max(0.0, low - 0.01), 1.0),
        )
        _save(fig, folder / "dice_per_view.png")
        written.append(folder / "dice_per_view.png")
    if scores.worst:
        written.append(worst_gallery(scores.worst, folder / "worst.png"))
    return written


def error_overlay(photo: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The photo, dimmed, with missed car in red and false car in blue."""
    out = (photo.astype(np.float32) * 0.6).astype(np.uint8)
    out[(truth > 0) & ~(pred > 0)] = MISSED
    out[(pred > 0) & ~(truth > 0)] = FALSE
    return out


def worst_gallery(worst, png) -> Path:
    """A grid of the worst images with their errors drawn over the photo."""
    cols = min(4, len(worst))
    rows = -(-len(worst) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (score, photo_path, mask_path, probs) in zip(axes.ravel(), worst):
        size = (probs.shape[1], probs.shape[0])
        photo = resize(read_photo(photo_path), size)
        truth = resize(read_mask(mask_path).astype(np.float32), size) > 0.5
        ax.imshow(error_overlay(photo, probs > 0.5, truth))
        ax.set_title(f"{Path(photo_path).name}  dice {score:.4f}", fontsize=8)
    fig.suptitle("Worst images: red = car missed, blue = background called car", fontsize=10)
    _save(fig, png)
    return Path(png)

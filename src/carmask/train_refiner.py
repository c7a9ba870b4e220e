"""Training the edge refiner (`carmask.models.refiner`) on top of named coarse models, on the CPU.

`carmask train DATA -o RUN --recipe edge-refiner` runs `train` here:

1. `setup`: the split by car of every recipe (`split_by_car(cars, 0.15, 0)`
   over carvana-512: the coarse models' own split), so the refiner's
   validation cars are cars that neither the coarse models nor the refiner
   trained on. Then the cache, the refiner and its optimizer.
2. The cache (`carmask.refiner_data`), one car at a time, at 512x512: the
   photos, their masks, the studio and each source's coarse probabilities
   (a source: a coarse model and where its studio comes from, the car's
   views or the photo alone), with perturbed copies for the coarse models'
   own training cars.
3. The loop: a buffer of photos held as packed tables (`refiner.packed`);
   each step draws band pixels from the whole buffer (their patches
   recoloured and mirrored), and a few photos of the buffer are replaced
   by new ones. An epoch is `steps_per_epoch` steps; `evaluate` runs
   `refiner.refine_batch` itself on the validation photos.

Files in the run folder as `carmask train` writes them: metrics.csv,
curve.png, split.json, best.pt (best validation dice), model.pt (the last
epoch: the one to ship, chosen without looking at the validation cars),
last.pt (`--resume`).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from carmask.data import discover
from carmask.devices import pick_device
from carmask.files import atomic_write
from carmask.metrics import batch_dice
from carmask.models import refiner as rf
from carmask.models import refiner_frames
from carmask.refiner_data import Buffer, CoarseCache, TileBuffer
from carmask.report import plot_curves
from carmask.run_files import load_last, log_epoch, open_log, save_last
from carmask.train import held_out, learning_rate
from carmask.train_config import RefinerConfig


@dataclass
class Run:
    config: RefinerConfig
    run_dir: Path
    cache: CoarseCache
    train_items: list[tuple[int, int, int]]  # (photo row, source, coarse copy) the loop draws from
    val_rows: np.ndarray
    refiner: rf.EdgeRefiner
    optimizer: torch.optim.Optimizer
    meta: dict
    epoch: int = 0
    best_dice: float = -1.0
    elapsed: float = 0.0
    generator: torch.Generator = field(default_factory=torch.Generator)

    @property
    def log(self) -> Path:
        return self.run_dir / "metrics.csv"


def train(
    data_dir,
    run_dir,
    config: RefinerConfig,
    device: str = "auto",
    resume: bool = False,
    cache_dir=None,
    progress: bool = True,
    workers: int | None = None,
    skipped=None,
) -> Path:
    """Train a refiner; returns the path of its best checkpoint (best.pt).
    It trains on the CPU (`device` auto or cpu); `workers` is not used (the
    cache is built in this process, one car at a time)."""
    run_dir = Path(run_dir)
    run = setup(
        data_dir, run_dir, config, pick_device("cpu" if device == "auto" else device), resume, cache_dir, progress
    )
    if skipped:
        for reason in run.cache.skipped:
            skipped(reason)
    buffer = make_buffer(run.cache.fetch, run.train_items, config, run.refiner, run.generator)
    for epoch in range(run.epoch, config.epochs):
        train_loss, out_of_time, seconds = train_one_epoch(
            run.refiner, F.binary_cross_entropy_with_logits, run.optimizer, buffer, config, epoch, run.elapsed, progress
        )
        run.elapsed += seconds
        if train_loss is None:
            break
        # every 4th validation photo: a figure to follow (benchmarks/edge_refiner.py measures them all)
        val_loss, val_dice = evaluate(run.refiner, run.cache, run.val_rows[::4], config)
        save_epoch(run, train_loss, val_loss, val_dice, progress)
        if out_of_time:
            break
    plot_curves(run.log, run_dir / "curve.png")
    return run_dir / "best.pt"


def setup(
    data_dir,
    run_dir: Path,
    config: RefinerConfig,
    device: torch.device,
    resume: bool = False,
    cache_dir=None,
    progress: bool = True,
) -> Run:
    if device.type != "cpu":
        raise ValueError("the refiner trains on the CPU (its recipe's point: no GPU needed)")
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    cars = discover(data_dir)

    coarse_train, val_cars = held_out(list(cars), config.val_cars, config.val_fraction, config.seed)
    extra = sorted(set(config.train_on_val) & set(val_cars))
    measured = sorted(set(val_cars) - set(extra))
    split = {"train": coarse_train + extra, "val": measured, "coarse_train": coarse_train, "out_of_sample_train": extra}
    atomic_write(run_dir / "split.json", lambda tmp: tmp.write_text(json.dumps(split, indent=1)))
    sources = [tuple(s) for s in config.sources]
    cache = CoarseCache.build(
        {c: cars[c] for c in coarse_train + val_cars},
        sources,
        config.perturb,
        set(coarse_train),
        Path(cache_dir or run_dir / "cache"),
        config.seed,
        progress,
    )
    in_sample, extra_cars = set(coarse_train), set(extra)
    train_items = [
        (row, s, copy)
        for row, car in enumerate(cache.cars)
        if car in in_sample
        for s in range(len(sources))
        for copy in range(cache.copies)
    ]
    train_items += [(row, s, 0) for row, car in enumerate(cache.cars) if car in extra_cars for s in range(len(sources))]
    val_rows = np.flatnonzero(np.isin(cache.cars, measured))
    refiner = make_refiner(config)
    optimizer = torch.optim.AdamW(refiner.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    meta = {
        "kind": "refiner",
        "sources": [list(s) for s in sources],
        "train_cars": len(coarse_train) + len(extra),
        "val_cars": len(measured),
        "train_photos": len({row for row, _, _ in train_items}),
        "val_photos": int(len(val_rows)),
        "coarse_copies": cache.copies,
        "config": asdict(config),
        "skipped": len(cache.skipped),
        "parameters": sum(p.numel() for p in refiner.parameters()),
    }
    run = Run(config, run_dir, cache, train_items, val_rows, refiner, optimizer, meta)
    if resume and (run_dir / "last.pt").exists():
        run.epoch, run.best_dice, run.elapsed = load_last(run_dir / "last.pt", refiner, optimizer, "cpu")
    run.generator.manual_seed(config.seed + run.epoch)
    open_log(run.log, run.epoch)
    return run


def make_refiner(config: RefinerConfig):
    """A fresh refiner of the config's shape."""
    if config.shape == "points":
        return rf.EdgeRefiner(config.radius, config.ring, config.hidden, config.low)
    if config.shape == "tiles":
        tile = config.run_tile or config.tile  # the side it runs on; training draws config.tile
        return rf.TileRefiner(config.channels, config.dilations, tile, config.low, config.fine)
    raise ValueError(f"refiner shape {config.shape!r}: points or tiles")


def make_buffer(fetch, items: list, config: RefinerConfig, refiner, generator: torch.Generator):
    """The training buffer for the refiner's shape."""
    if isinstance(refiner, rf.TileRefiner):
        return TileBuffer(fetch, items, config, generator)
    return Buffer(fetch, items, config, refiner.offsets, generator)


# -- the loop --------------------------------------------------------------------------------------


def train_one_epoch(
    refiner: rf.EdgeRefiner,
    criterion,
    optimizer: torch.optim.Optimizer,
    buffer: Buffer,
    config: RefinerConfig,
    epoch: int,
    elapsed: float = 0.0,
    progress: bool = False,
) -> tuple[float | None, bool, float]:
    """`config.steps_per_epoch` steps, or fewer when the time budget (of which
    `elapsed` seconds are spent) runs out: (mean training loss, or None if no
    step was made; out of time; seconds this epoch took). `criterion(logits,
    targets)` scores the refined logits: the coarse logit plus the refiner's."""
    budget = 60 * config.max_minutes if config.max_minutes else None
    refiner.train()
    total, seen, out_of_time, t0 = 0.0, 0, False, time.perf_counter()
    bar = tqdm(
        range(config.steps_per_epoch), desc=f"epoch {epoch + 1}", leave=False, disable=None if progress else True
    )  # None: on a terminal only
    for step in bar:
        done = (
            (elapsed + time.perf_counter() - t0) / budget
            if budget
            else (epoch * config.steps_per_epoch + step) / (config.epochs * config.steps_per_epoch)
        )
        if done >= 1:
            out_of_time = True
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config.lr, config.schedule, done)
        x, coarse_logit, y, *weight = buffer.draw(config.batch_size)
        if weight:  # tiles: the loss counts at the band's pixels only
            loss = (criterion(coarse_logit + refiner(x), y, reduction="none") * weight[0]).sum() / weight[
                0
            ].sum().clamp(min=1)
        else:
            loss = criterion(coarse_logit + refiner(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        buffer.refresh()  # a few new photos: the buffer's photos change over the epoch
        total += loss.item()
        seen += 1
    return (total / seen if seen else None), out_of_time, time.perf_counter() - t0


@torch.no_grad()
def evaluate(
    refiner: rf.EdgeRefiner, cache: CoarseCache, rows: np.ndarray, config: RefinerConfig, batch: int = 16
) -> tuple[float, list[float]]:
    """(mean BCE over band pixels, mean per-photo dice at 512 for each source)
    of the refined probabilities, computed by `refine_batch` on copy 0 of
    the coarse outputs (as the predictor computes them)."""
    refiner.eval()
    losses, dices = [], []
    for source in range(len(cache.sources)):
        found = []
        for start in range(0, len(rows), batch):
            photos, studios, coarse, truth = cache.fetch([(r, source, 0) for r in rows[start : start + batch]])
            refined = refiner_frames.refine_batch(refiner, photos, studios, coarse.float() / 255)
            band = refiner_frames.band(coarse, config.low)
            p = refined.reshape(-1)[band].clamp(1e-6, 1 - 1e-6)
            losses.append(F.binary_cross_entropy(p, truth.reshape(-1)[band].float()).item())
            found += batch_dice(refined > 0.5, truth.bool()).tolist()
        dices.append(float(np.mean(found)) if found else float("nan"))
    return (float(np.mean(losses)) if losses else float("nan")), dices


def save_epoch(run: Run, train_loss: float, val_loss: float, dices: list[float], progress: bool = False) -> None:
    """An epoch is done: a metrics.csv row (val_dice: the mean over the
    sources), best.pt when it improved, model.pt (this epoch) and last.pt."""
    val_dice = float(np.mean(dices))
    run.epoch += 1
    improved = not run.val_rows.size or val_dice > run.best_dice
    if improved:
        run.best_dice = val_dice
    log_epoch(run.log, run.epoch, train_loss, val_loss, val_dice, run.optimizer, run.elapsed)
    if progress:
        each = "  ".join(f"{model} {dice:.5f}" for (model, _), dice in zip(run.cache.sources, dices))
        tqdm.write(
            f"epoch {run.epoch}: train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
            f"val dice {each}  ({run.elapsed:.0f}s)",
            file=sys.stderr,
        )
    meta = {
        **run.meta,
        "epochs": run.epoch,
        "steps": run.epoch * run.config.steps_per_epoch,
        "train_seconds": round(run.elapsed, 1),
        "val_dice": round(val_dice, 5),
        "val_dice_by_source": [round(d, 5) for d in dices],
    }
    if improved:
        rf.save(run.refiner, run.run_dir / "best.pt", meta)
    rf.save(run.refiner, run.run_dir / "model.pt", meta)
    save_last(run.run_dir / "last.pt", run.refiner, run.optimizer, run.epoch, run.best_dice, run.elapsed)

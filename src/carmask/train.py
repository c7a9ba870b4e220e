"""The training loop, read top to bottom (as torchvision's segmentation references).

`train` runs `setup` (split by car, input cache, statistics, model, optimizer,
resume from `last.pt`), then for each epoch `train_one_epoch`, `evaluate` on
the held-out cars and `save_epoch` (metrics.csv, best.pt, model.pt, last.pt),
and draws curve.png at the end. Under `torchrun` the same loop runs in every
process, each on its share of every batch; rank 0 alone writes files. The
recipes of the shipped models are in `carmask.recipes`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from carmask import distributed, models
from carmask.data import InputCache, augment, build_cache, discover, split_by_car
from carmask.devices import pick_device
from carmask.files import atomic_write
from carmask.inputs.spec import InputSpec
from carmask.metrics import batch_dice
from carmask.outcomes import ImageError
from carmask.report import plot_curves
from carmask.run_files import load_last, log_epoch, open_log, save_last
from carmask.train_config import TrainConfig


@dataclass
class Run:
    """What one training run holds between its epochs."""

    config: TrainConfig
    run_dir: Path
    device: torch.device
    cache: InputCache
    train_rows: np.ndarray
    val_rows: np.ndarray
    net: models.Segmenter  # the plain model: evaluated and saved
    model: nn.Module  # what trains: `net`, or DDP around it under torchrun
    optimizer: torch.optim.Optimizer
    meta: dict  # model card facts, saved in every checkpoint
    epoch: int = 0  # epochs done
    best_dice: float = -1.0
    elapsed: float = 0.0  # seconds spent training (the time budget's clock)
    # Shuffling and augmentation draws: seeded alike in every process.
    generator: torch.Generator = field(default_factory=torch.Generator)

    @property
    def log(self) -> Path:
        return self.run_dir / "metrics.csv"


def train(
    data_dir,
    run_dir,
    config: TrainConfig,
    device: str = "auto",
    resume: bool = False,
    cache_dir=None,
    progress: bool = True,
    workers: int | None = None,
    skipped: Callable[[ImageError], None] | None = None,
) -> Path:
    """Train a model and return the path of its best checkpoint (`best.pt`).

    With `config.max_minutes` the run is budgeted in time: the schedule follows
    the elapsed share of the budget, and training stops when it is spent.
    Under `torchrun` the processes share every batch (DDP); rank 0 alone logs
    and writes files, and the run gives what one process would give.
    `workers`: processes that build the input cache (default: `data.build_cache`'s).
    `progress`: each epoch's figures on stderr, and bars there when it is a
    terminal. `skipped`: called with each photo left out (its `ImageError`).
    """
    run_dir = Path(run_dir)
    with distributed.session(pick_device(device)) as device:
        progress = progress and distributed.is_main()
        run = setup(data_dir, run_dir, config, device, resume, cache_dir, workers, progress)
        if skipped and distributed.is_main():
            for error in run.cache.skipped:
                skipped(error)
        criterion = partial(loss_fn, dice_weight=config.dice_weight, edge_weight=config.edge_weight)
        for epoch in range(run.epoch, config.epochs):
            train_loss, out_of_time, seconds = train_one_epoch(
                run.model,
                criterion,
                run.optimizer,
                run.cache,
                run.train_rows,
                device,
                run.generator,
                epoch=epoch,
                epochs=config.epochs,
                batch_size=config.batch_size,
                lr_at=partial(learning_rate, config.lr, config.schedule),
                augment_spec=config.spec if config.augment else None,
                mixed_precision=config.mixed_precision,
                budget=60 * config.max_minutes if config.max_minutes else None,
                elapsed=run.elapsed,
                progress=progress,
            )
            run.elapsed += seconds
            if train_loss is None:  # the budget ran out before this epoch's first step: no epoch to log
                break
            val_loss, val_dice = evaluate(
                run.net, criterion, run.cache, run.val_rows, device, mixed_precision=config.mixed_precision
            )
            save_epoch(run, train_loss, val_loss, val_dice, progress)
            if out_of_time:
                break
        if distributed.is_main():
            plot_curves(run.log, run_dir / "curve.png")
        distributed.barrier()  # every process returns once rank 0 has written the files
    return run_dir / "best.pt"


def setup(
    data_dir,
    run_dir: Path,
    config: TrainConfig,
    device: torch.device,
    resume: bool = False,
    cache_dir=None,
    workers: int | None = None,
    progress: bool = True,
) -> Run:
    """Split by car (split.json), build or open the input cache, and make the
    model and its optimizer, continued from `last.pt` when resuming."""
    main, world = distributed.is_main(), distributed.world_size()
    if config.batch_size % world:
        raise ValueError(f"batch size {config.batch_size} must be a multiple of the {world} processes")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    cars = discover(data_dir)
    train_cars, val_cars = held_out(list(cars), config.val_cars, config.val_fraction, config.seed)
    if main:
        split = json.dumps({"train": train_cars, "val": val_cars}, indent=1)
        atomic_write(run_dir / "split.json", lambda tmp: tmp.write_text(split))
    # Rank 0 builds the cache; the others then find it on disk and open it.
    cache = distributed.main_first(
        lambda: build_cache(
            {c: cars[c] for c in train_cars + val_cars},
            config.spec,
            Path(cache_dir or run_dir / "cache"),
            workers=workers,
            progress=progress,
            device=device,
        )
    )
    in_val = np.isin(cache.cars, val_cars)
    train_rows, val_rows = np.flatnonzero(~in_val), np.flatnonzero(in_val)
    if len(train_rows) == 0:
        why = f" ({len(cache.skipped)} left out; the first: {cache.skipped[0]})" if cache.skipped else ""
        raise ValueError(f"no usable training photos in {data_dir}{why}")
    mean, std = cache.channel_stats(train_rows)
    net = models.Segmenter(config.arch, config.spec, config.arch_kwargs, mean, std).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input size: let cuDNN pick its fastest kernels
        net = net.to(memory_format=torch.channels_last)
        cache.keep_on(device)  # the whole cache in GPU memory where it fits
    model = distributed.wrap(net, device)  # DDP under torchrun: gradients averaged over processes
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=device.type == "cuda"
    )  # one kernel per step on a GPU
    meta = {
        "arch": config.arch,
        "train_cars": len(train_cars),
        "val_cars": len(val_cars),
        "train_images": int(len(train_rows)),
        "val_images": int(len(val_rows)),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "processes": world,
        "config": {k: v for k, v in asdict(config).items() if k != "spec"},
        "skipped": len(cache.skipped),
    }
    run = Run(config, run_dir, device, cache, train_rows, val_rows, net, model, optimizer, meta)
    if resume and (run_dir / "last.pt").exists():
        run.epoch, run.best_dice, run.elapsed = load_last(run_dir / "last.pt", net, optimizer, device)
    run.generator.manual_seed(config.seed + run.epoch)
    if main:
        open_log(run.log, run.epoch)
    return run


def train_one_epoch(
    model: nn.Module,
    criterion: Callable,
    optimizer: torch.optim.Optimizer,
    cache: InputCache,
    rows: np.ndarray,
    device: torch.device,
    generator: torch.Generator,
    *,
    epoch: int,
    epochs: int,
    batch_size: int,
    lr_at: Callable[[float], float],
    augment_spec: InputSpec | None = None,
    mixed_precision: bool = True,
    budget: float | None = None,
    elapsed: float = 0.0,
    progress: bool = False,
) -> tuple[float | None, bool, float]:
    """One pass over the training `rows` of `cache` in a fresh order drawn
    from `generator`, or less when the time budget runs out: `budget` seconds
    of training of which `elapsed` are spent (else the schedule follows epoch
    `epoch` of `epochs`); `lr_at(done)` is the learning rate at that share
    done; `augment_spec`: augment the batches (for that input). Returns (mean
    training loss over all processes, or None if the budget ran out before
    the first step; out of time; seconds spent)."""
    rank, world = distributed.rank(), distributed.world_size()
    steps = max(1, len(rows) // batch_size)
    model.train()
    order = torch.randperm(len(rows), generator=generator).numpy()
    # The loss sum stays on the device: reading it each step would make the CPU wait for the GPU.
    total, seen, out_of_time = torch.zeros((), dtype=torch.float64, device=device), 0, False
    t0 = time.perf_counter()
    bar = tqdm(
        range(steps), desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=None if progress else True
    )  # None: on a terminal only
    for step in bar:
        done = (elapsed + time.perf_counter() - t0) / budget if budget else (epoch * steps + step) / (epochs * steps)
        if budget:  # each process's clock reads differently: all follow rank 0, and stop together
            done = distributed.from_main(done, device)
        if done >= 1:
            out_of_time = True
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(done)
        # The batch one process would take; under torchrun this process takes its share.
        batch = np.sort(rows[order[step * batch_size : (step + 1) * batch_size]])
        x, y = cache.batch(distributed.share(batch), device)
        if augment_spec is not None:
            x, y = augment(x, y, augment_spec, generator, part=(rank, world))
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, mixed_precision):
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach().double() * len(x)
        seen += len(x)
        if not bar.disable and step % 10 == 0:  # reading the loss waits for the device
            bar.set_postfix(loss=f"{total.item() / seen:.4f}")
    seconds = time.perf_counter() - t0
    total, seen = distributed.total([total.item(), seen], device)
    return (total / seen if seen else None), out_of_time, seconds


@torch.no_grad()
def evaluate(
    model,
    criterion: Callable,
    cache: InputCache,
    rows: np.ndarray,
    device,
    mixed_precision: bool = True,
    batch_size: int = 64,
) -> tuple[float, float]:
    """Mean loss (`criterion(logits, targets)`) and mean per-image dice of `model` on cache rows.

    Under torchrun each process scores every n-th row and the sums are added
    up: every process gets the figures one process would compute on all rows.
    """
    model.eval()
    rows = rows[distributed.rank() :: distributed.world_size()]
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    dice_sum = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, len(rows), batch_size):
        x, y = cache.batch(rows[start : start + batch_size], device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, mixed_precision):
            logits = model(x)
        loss_sum += criterion(logits, y).double() * len(x)
        dice_sum += batch_dice(logits > 0, y > 0.5).sum()
    loss_sum, dice_sum, count = distributed.total([loss_sum.item(), dice_sum.item(), len(rows)], device)
    if not count:
        return float("nan"), float("nan")
    return loss_sum / count, dice_sum / count


def save_epoch(run: Run, train_loss: float, val_loss: float, val_dice: float, progress: bool = False) -> None:
    """An epoch is done: a metrics.csv row, best.pt when validation dice
    improved, model.pt (this epoch) and last.pt (to resume); rank 0 writes."""
    run.epoch += 1
    validated = bool(run.val_rows.size)
    improved = not validated or val_dice > run.best_dice
    if improved:
        run.best_dice = val_dice
    if not distributed.is_main():
        return
    log_epoch(run.log, run.epoch, train_loss, val_loss, val_dice, run.optimizer, run.elapsed)
    if progress:
        figures = f"val loss {val_loss:.4f}  val dice {val_dice:.4f}" if validated else "no validation cars"
        tqdm.write(f"epoch {run.epoch}: train loss {train_loss:.4f}  {figures}  ({run.elapsed:.0f}s)", file=sys.stderr)
    meta = {
        **run.meta,
        "epochs": run.epoch,
        "train_seconds": round(run.elapsed, 1),
        "val_dice": round(val_dice, 5) if validated else None,
    }
    if improved:
        models.save(run.net, run.run_dir / "best.pt", meta)
    models.save(run.net, run.run_dir / "model.pt", meta)
    save_last(run.run_dir / "last.pt", run.net, run.optimizer, run.epoch, run.best_dice, run.elapsed)


def held_out(
    cars: list[str], val_cars: list[str] | None, val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """(training cars, validation cars): `val_cars` where given, else a split by car."""
    if val_cars is None:
        return split_by_car(cars, val_fraction, seed)
    val = set(val_cars)
    return sorted(set(cars) - val), sorted(set(cars) & val)


def loss_fn(
    logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 0.0, edge_weight: float = 0.0
) -> torch.Tensor:
    """BCE, with `edge_weight` more on pixels near the car's edge, plus
    `dice_weight` times the soft-dice loss."""
    weight = None
    if edge_weight > 0:
        # Pixels whose 7x7 neighbourhood holds both car and background are edge pixels.
        local = F.avg_pool2d(target, 7, stride=1, padding=3)
        weight = 1 + edge_weight * ((local > 0.01) & (local < 0.99)).float()
    loss = F.binary_cross_entropy_with_logits(logits.float(), target, weight=weight)
    if dice_weight > 0:
        probs = torch.sigmoid(logits.float())
        inter = (probs * target).sum((1, 2, 3))
        soft_dice = (2 * inter + 1) / (probs.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
        loss = loss + dice_weight * (1 - soft_dice).mean()
    return loss


def learning_rate(lr: float, schedule: str, progress: float) -> float:
    """`lr` constant (`schedule` "constant", the seed's), or ("cosine") a short
    warm-up then cosine decay over `progress` in [0, 1]."""
    if schedule == "constant":
        return lr
    warmup = 0.05
    if progress < warmup:
        return lr * (0.1 + 0.9 * progress / warmup)
    return lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup)))))


def autocast(device, mixed_precision: bool):
    enabled = device.type == "cuda" and mixed_precision
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)

"""The training loop, readable top to bottom.

data dir -> split by car -> input cache -> epochs of (augment, forward, loss,
step) -> validation dice per epoch -> metrics.csv, curve.png, last.pt, best.pt.
`resume=True` continues from `last.pt` in the run folder. Under `torchrun`
the same loop runs in every process, each on its share of every batch.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from carmask import distributed, models
from carmask.data import InputCache, augment, discover, split_by_car
from carmask.devices import pick_device
from carmask.io import atomic_write
from carmask.report import plot_curves
from carmask.views import InputSpec

# The seed's recipe: 480x320 frame, auto-crop, 100x100 input, photo + median diff.
SEED_SPEC = InputSpec(("rgb", "median_diff"), size=(100, 100), frame=(480, 320), crop=True)


@dataclass
class TrainConfig:
    arch: str = "seed"
    arch_kwargs: dict = field(default_factory=dict)
    spec: InputSpec = SEED_SPEC
    epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.15
    val_cars: list[str] | None = None  # hold out exactly these cars instead (e.g. another run's split)
    seed: int = 0
    dice_weight: float = 0.0   # 0: plain BCE (the seed); >0 adds soft-dice loss
    edge_weight: float = 0.0   # extra BCE weight on pixels near the car's edge
    augment: bool = False
    schedule: str = "constant"  # or "cosine" (warm-up, then cosine decay)
    mixed_precision: bool = True  # bf16 autocast on CUDA; ignored on the CPU
    max_minutes: float | None = None  # a time budget: the schedule follows it, then stop


def held_out(cars: list[str], config: TrainConfig) -> tuple[list[str], list[str]]:
    """(training cars, validation cars): `config.val_cars` where given, else a split by car."""
    if config.val_cars is None:
        return split_by_car(cars, config.val_fraction, config.seed)
    val = set(config.val_cars)
    return sorted(set(cars) - val), sorted(set(cars) & val)


def loss_fn(logits: torch.Tensor, target: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    weight = None
    if config.edge_weight > 0:
        # Pixels whose 7x7 neighbourhood holds both car and background are edge pixels.
        local = F.avg_pool2d(target, 7, stride=1, padding=3)
        weight = 1 + config.edge_weight * ((local > 0.01) & (local < 0.99)).float()
    loss = F.binary_cross_entropy_with_logits(logits.float(), target, weight=weight)
    if config.dice_weight > 0:
        probs = torch.sigmoid(logits.float())
        inter = (probs * target).sum((1, 2, 3))
        soft_dice = (2 * inter + 1) / (probs.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
        loss = loss + config.dice_weight * (1 - soft_dice).mean()
    return loss


def batch_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image dice of thresholded predictions (two empty masks score 1)."""
    pred, truth = logits > 0, target > 0.5
    inter = (pred & truth).sum((1, 2, 3)).float()
    total = (pred.sum((1, 2, 3)) + truth.sum((1, 2, 3))).float()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


@torch.no_grad()
def evaluate_cache(model, cache: InputCache, rows: np.ndarray, config: TrainConfig,
                   device, batch_size: int = 64) -> tuple[float, float]:
    """Mean loss and mean per-image dice of `model` on cache rows.

    Under torchrun each process scores every n-th row and the sums are added
    up: every process gets the figures one process would compute on all rows.
    """
    model.eval()
    rows = rows[distributed.rank()::distributed.world_size()]
    loss_sum, dice_sum = 0.0, 0.0
    for start in range(0, len(rows), batch_size):
        x, y = cache.batch(rows[start:start + batch_size], device)
        with autocast(device, config):
            logits = model(x)
        loss_sum += loss_fn(logits, y, config).item() * len(x)
        dice_sum += batch_dice(logits, y).sum().item()
    loss_sum, dice_sum, count = distributed.total([loss_sum, dice_sum, len(rows)], device)
    if not count:
        return float("nan"), float("nan")
    return loss_sum / count, dice_sum / count


def autocast(device, config: TrainConfig):
    enabled = device.type == "cuda" and config.mixed_precision
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def learning_rate(config: TrainConfig, progress: float) -> float:
    """Constant (the seed), or a short warm-up then cosine decay over `progress` in [0, 1]."""
    if config.schedule == "constant":
        return config.lr
    warmup = 0.05
    if progress < warmup:
        return config.lr * (0.1 + 0.9 * progress / warmup)
    return config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup)))))


def train(data_dir, run_dir, config: TrainConfig, device: str = "auto", resume: bool = False,
          cache_dir=None, progress: bool = True) -> Path:
    """Train a model and return the path of its best checkpoint (`best.pt`).

    With `config.max_minutes` the run is budgeted in time: the schedule follows
    the elapsed share of the budget, and training stops when it is spent.
    Under `torchrun` the processes share every batch (DDP); rank 0 alone logs
    and writes files, and the run gives what one process would give.
    """
    with distributed.session(pick_device(device)) as device:
        best = _train(data_dir, Path(run_dir), config, device, resume, cache_dir,
                      progress and distributed.is_main())
        distributed.barrier()  # every process returns once rank 0 has written the files
    return best


def _train(data_dir, run_dir: Path, config: TrainConfig, device: torch.device, resume: bool,
           cache_dir, progress: bool) -> Path:
    main, rank, world = distributed.is_main(), distributed.rank(), distributed.world_size()
    if config.batch_size % world:
        raise ValueError(f"batch size {config.batch_size} must be a multiple of the {world} processes")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    cars = discover(data_dir)
    train_cars, val_cars = held_out(list(cars), config)
    if main:
        (run_dir / "split.json").write_text(json.dumps({"train": train_cars, "val": val_cars}, indent=1))
    # Rank 0 builds the cache; the others then find it on disk and open it.
    cache = distributed.main_first(lambda: InputCache.build(
        {c: cars[c] for c in train_cars + val_cars}, config.spec,
        Path(cache_dir or run_dir / "cache"), progress=progress))
    in_val = np.isin(cache.cars, val_cars)
    train_rows, val_rows = np.flatnonzero(~in_val), np.flatnonzero(in_val)
    if len(train_rows) == 0:
        raise ValueError(f"no usable training photos in {data_dir}")
    mean, std = cache.channel_stats(train_rows)
    net = models.Segmenter(config.arch, config.spec, config.arch_kwargs, mean, std).to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    model = distributed.wrap(net, device)  # DDP under torchrun: gradients averaged over processes
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, len(train_rows) // config.batch_size)
    budget = 60 * config.max_minutes if config.max_minutes else None
    start_epoch, best_dice, elapsed = 0, -1.0, 0.0
    last = run_dir / "last.pt"
    if resume and last.exists():
        state = torch.load(last, map_location=device, weights_only=True)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best_dice, elapsed = state["epoch"], state["best_dice"], state["elapsed"]
    # One generator, seeded alike in every process: the same order and augmentation draws.
    generator = torch.Generator().manual_seed(config.seed + start_epoch)
    log = run_dir / "metrics.csv"
    if main and start_epoch == 0:
        log.write_text("epoch,train_loss,val_loss,val_dice,lr,seconds\n")
    meta = {"arch": config.arch, "train_cars": len(train_cars), "val_cars": len(val_cars),
            "train_images": int(len(train_rows)), "val_images": int(len(val_rows)),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "processes": world, "config": {k: v for k, v in asdict(config).items() if k != "spec"},
            "skipped": len(cache.skipped)}
    out_of_time = False
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_rows), generator=generator).numpy()
        total, seen = 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not progress, leave=False)
        for step in bar:
            done = (elapsed + time.perf_counter() - t0) / budget if budget else \
                (epoch * steps_per_epoch + step) / (config.epochs * steps_per_epoch)
            if budget:  # each process's clock reads differently: all follow rank 0, and stop together
                done = distributed.from_main(done, device)
            if done >= 1:
                out_of_time = True
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, done)
            # The batch one process would take; under torchrun this process takes its share.
            rows = np.sort(train_rows[order[step * config.batch_size:(step + 1) * config.batch_size]])
            x, y = cache.batch(distributed.share(rows), device)
            if config.augment:
                x, y = augment(x, y, config.spec, generator, part=(rank, world))
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, config):
                loss = loss_fn(model(x), y, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(x), seen + len(x)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        elapsed += time.perf_counter() - t0
        total, seen = distributed.total([total, seen], device)
        val_loss, val_dice = evaluate_cache(net, cache, val_rows, config, device)
        if main:
            with open(log, "a", newline="") as f:
                csv.writer(f).writerow([epoch + 1, f"{total / max(seen, 1):.5f}", f"{val_loss:.5f}",
                                        f"{val_dice:.5f}", f"{optimizer.param_groups[0]['lr']:.2e}",
                                        f"{elapsed:.1f}"])
            if progress:
                tqdm.write(f"epoch {epoch + 1}: train loss {total / max(seen, 1):.4f}  "
                           f"val loss {val_loss:.4f}  val dice {val_dice:.4f}  ({elapsed:.0f}s)")
            epoch_meta = {**meta, "epochs": epoch + 1, "train_seconds": round(elapsed, 1),
                          "val_dice": round(val_dice, 5)}
            if not val_rows.size or val_dice > best_dice:
                best_dice = val_dice
                models.save(net, run_dir / "best.pt", epoch_meta)
            models.save(net, run_dir / "model.pt", epoch_meta)
            state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                     "epoch": epoch + 1, "best_dice": best_dice, "elapsed": elapsed}
            atomic_write(last, lambda tmp: torch.save(state, tmp))
        if out_of_time:
            break
    if main:
        plot_curves(log, run_dir / "curve.png")
    return run_dir / "best.pt"

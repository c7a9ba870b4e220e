"""Training the edge refiner (`carmask.models.refiner`) on top of a named coarse model, on the CPU.

`carmask train DATA -o RUN --recipe refiner-multiview` runs `train` here:

1. `setup`: the split by car of every recipe (`split_by_car(cars, 0.15, 0)`
   over carvana-512: the coarse models' own split), so the refiner's
   validation cars are cars that neither the coarse model nor the refiner
   trained on. Then the cache (`prepare`), the refiner and its optimizer.
2. `prepare`, one car at a time, at 512x512: the photos, their masks, the
   studio (the median of the car's views) and the coarse model's
   probabilities as the predictor computes them. On its own training cars
   the coarse model is a little better than on new cars (dice 0.9923 against
   0.9917), so for those cars `perturb` more copies are made: the coarse
   model run on the car's views moved by a few pixels, mirrored and
   recoloured, its output moved back: the same model's errors, drawn afresh.
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

import csv
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from carmask import models
from carmask.data import discover
from carmask.decode import decode
from carmask.devices import pick_device
from carmask.io import ImageError, atomic_write, read_mask
from carmask.models import refiner as rf
from carmask.postprocess import place
from carmask.report import plot_curves
from carmask.views import NotEnoughViews, car_inputs


@dataclass
class RefinerConfig:
    """One refiner training run's settings (see `carmask.recipes`)."""
    coarse: str = "multiview-fast"   # the coarse model: a shipped name or a checkpoint path
    studio: str = "set"              # "set": the median of the car's views; "photo": the single-photo estimate
    radius: int = 3
    ring: int = 8
    hidden: tuple[int, ...] = (64, 32)
    low: float = 0.05                # the band: low < coarse probability < 1 - low
    perturb: int = 2                 # perturbed coarse copies per photo of the coarse model's training cars
    batch_size: int = 8192           # band pixels per step
    buffer: int = 64                 # photos held in memory; `refresh` of them replaced each step
    refresh: int = 2
    steps_per_epoch: int = 2000
    epochs: int = 10_000
    lr: float = 3e-3
    weight_decay: float = 1e-4
    jitter: float = 0.15             # colour gain and offset of the patches (photo and studio alike)
    schedule: str = "cosine"
    val_fraction: float = 0.15
    val_cars: list[str] | None = None
    seed: int = 0
    max_minutes: float | None = 60.0
    # cars whose coarse outputs are out-of-sample (the coarse model never trained on them)
    # and may be trained on; the rest of the validation cars are measured on
    train_on_val: list[str] = field(default_factory=list)


@dataclass
class Run:
    config: RefinerConfig
    run_dir: Path
    cache: "CoarseCache"
    train_items: list[tuple[int, int]]   # (photo row, coarse copy) the loop draws from
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


def train(data_dir, run_dir, config: RefinerConfig, device: str = "auto", resume: bool = False,
          cache_dir=None, progress: bool = True, workers: int | None = None, skipped=None) -> Path:
    """Train a refiner; returns the path of its best checkpoint (best.pt).
    It trains on the CPU (`device` auto or cpu); `workers` is not used (the
    cache is built in this process, one car at a time)."""
    run_dir = Path(run_dir)
    run = setup(data_dir, run_dir, config, pick_device("cpu" if device == "auto" else device), resume,
                cache_dir, progress)
    if skipped:
        for reason in run.cache.skipped:
            skipped(reason)
    buffer = Buffer(lambda items: run.cache.fetch(items, config.studio), run.train_items, config,
                    run.refiner.offsets, run.generator)
    for epoch in range(run.epoch, config.epochs):
        train_loss, out_of_time, seconds = train_one_epoch(run.refiner, F.binary_cross_entropy_with_logits,
                                                           run.optimizer, buffer, config, epoch, run.elapsed,
                                                           progress)
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


def setup(data_dir, run_dir: Path, config: RefinerConfig, device: torch.device, resume: bool = False,
          cache_dir=None, progress: bool = True) -> Run:
    if device.type != "cpu":
        raise ValueError("the refiner trains on the CPU (its recipe's point: no GPU needed)")
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    cars = discover(data_dir)
    from carmask.train import held_out  # the split of every recipe: the coarse models' own
    coarse_train, val_cars = held_out(list(cars), config)
    extra = sorted(set(config.train_on_val) & set(val_cars))
    measured = sorted(set(val_cars) - set(extra))
    split = {"train": coarse_train + extra, "val": measured, "coarse_train": coarse_train,
             "out_of_sample_train": extra}
    atomic_write(run_dir / "split.json", lambda tmp: tmp.write_text(json.dumps(split, indent=1)))
    cache = CoarseCache.build({c: cars[c] for c in coarse_train + val_cars}, config, set(coarse_train),
                              Path(cache_dir or run_dir / "cache"), progress)
    in_sample = set(coarse_train)
    train_items = [(row, copy) for row, car in enumerate(cache.cars) if car in in_sample
                   for copy in range(cache.copies)]
    train_items += [(row, 0) for row, car in enumerate(cache.cars) if car in set(extra)]
    val_rows = np.flatnonzero(np.isin(cache.cars, measured))
    refiner = rf.EdgeRefiner(config.radius, config.ring, config.hidden, config.low)
    optimizer = torch.optim.AdamW(refiner.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    meta = {"kind": "refiner", "coarse": config.coarse, "studio": config.studio,
            "train_cars": len(coarse_train) + len(extra), "val_cars": len(measured),
            "train_photos": len({row for row, _ in train_items}), "val_photos": int(len(val_rows)),
            "coarse_copies": cache.copies, "config": asdict(config), "skipped": len(cache.skipped),
            "parameters": sum(p.numel() for p in refiner.parameters())}
    run = Run(config, run_dir, cache, train_items, val_rows, refiner, optimizer, meta)
    if resume and (run_dir / "last.pt").exists():
        _resume(run, run_dir / "last.pt")
    run.generator.manual_seed(config.seed + run.epoch)
    if run.epoch == 0:
        run.log.write_text("epoch,train_loss,val_loss,val_dice,lr,seconds\n")
    return run


# -- the cache of coarse outputs -------------------------------------------------------------------

class CoarseCache:
    """Per photo at 512x512, memory-mapped: `photos` N x H x W x 3, `masks` N x H x W,
    `coarse` copies x N x H x W (probability x 255; copy 0 as the predictor
    computes it), and per car `studios` K x H x W x 3 (the median of its views)."""

    def __init__(self, folder: Path):
        self.folder = folder
        index = json.loads((folder / "index.json").read_text())
        self.cars, self.names, self.skipped = index["cars"], index["names"], index["skipped"]
        self.car_order = index["car_order"]
        self.studio_of = np.array([self.car_order.index(c) for c in self.cars], dtype=np.int64)
        self.photos = np.load(folder / "photos.npy", mmap_mode="r")
        self.masks = np.load(folder / "masks.npy", mmap_mode="r")
        self.studios = np.load(folder / "studios.npy", mmap_mode="r")
        self.coarse = np.load(folder / "coarse.npy", mmap_mode="r")
        self.copies = self.coarse.shape[0]

    def fetch(self, items: list[tuple[int, int]], studio: str):
        """`fetch_rows` for (row, copy) items, read in file order and returned in theirs."""
        order = sorted(range(len(items)), key=lambda i: items[i])
        got = fetch_rows(self, np.array([items[i][0] for i in order]), [items[i][1] for i in order], studio)
        back = torch.from_numpy(np.argsort(order))
        return tuple(t[back] for t in got)

    @classmethod
    def build(cls, cars: dict, config: RefinerConfig, perturbed: set[str], folder: Path,
              progress: bool = True) -> "CoarseCache":
        key = hashlib.sha1(json.dumps([3, config.coarse, str(models.resolve(config.coarse).stat().st_size),
                                       config.perturb, sorted(perturbed), sorted(
                                           str(e.photo) for ex in cars.values() for e in ex)]).encode())
        folder = Path(folder) / f"refiner-{key.hexdigest()[:16]}"
        if (folder / "index.json").exists():
            return cls(folder)
        folder.mkdir(parents=True, exist_ok=True)
        coarse_model = models.load(config.coarse)[0]
        total = sum(len(v) for v in cars.values())
        first = next(e.photo for ex in cars.values() for e in ex)
        size = tuple(decode(first, upright=False).shape[-2:])  # (height, width): the dataset's photos' own
        arrays = {"photos": np.lib.format.open_memmap(folder / "photos.npy", "w+", np.uint8, (total, *size, 3)),
                  "masks": np.lib.format.open_memmap(folder / "masks.npy", "w+", np.uint8, (total, *size)),
                  "studios": np.lib.format.open_memmap(folder / "studios.npy", "w+", np.uint8,
                                                       (len(cars), *size, 3)),
                  "coarse": np.lib.format.open_memmap(folder / "coarse.npy", "w+", np.uint8,
                                                      (1 + config.perturb, total, *size))}
        generator = torch.Generator().manual_seed(config.seed)
        names, car_of, skipped, order, n = [], [], [], [], 0
        for car, examples in tqdm(sorted(cars.items()), desc="coarse outputs", unit="car",
                                  disable=None if progress else True):
            photos, masks, kept = [], [], []
            for example in examples:
                try:
                    photo = decode(example.photo, upright=False)
                    if tuple(photo.shape[-2:]) != size:
                        raise ImageError(example.photo, f"not {size[1]}x{size[0]} as the other photos")
                    masks.append(read_mask(example.mask, expected_size=(size[1], size[0])))
                    photos.append(photo)
                    kept.append(example)
                except ImageError as exc:
                    skipped.append(str(exc))
            try:
                batch = torch.stack(photos) if photos else None
                copies = [coarse_probs(coarse_model, batch)] if batch is not None else []
                copies += [coarse_probs(coarse_model, batch, generator) for _ in range(config.perturb)
                           if car in perturbed]
                studio = rf.set_studios(batch, [len(photos)], copies[0].float() / 255)[0] \
                    if len(photos) >= 3 else None
            except NotEnoughViews as exc:
                skipped += [f"{e.photo}: {exc}" for e in kept]
                continue
            if studio is None:
                skipped += [f"{e.photo}: too few views for a studio" for e in kept]
                continue
            rows = slice(n, n + len(kept))
            arrays["photos"][rows] = batch.permute(0, 2, 3, 1).numpy()
            arrays["masks"][rows] = np.stack(masks)
            arrays["studios"][len(order)] = studio.permute(1, 2, 0).numpy()
            for i in range(1 + config.perturb):
                arrays["coarse"][i, rows] = copies[min(i, len(copies) - 1)].numpy()  # in-sample copies or copy 0
            names += [e.photo.name for e in kept]
            car_of += [car] * len(kept)
            order.append(car)
            n += len(kept)
        for array in arrays.values():
            array.flush()
        del arrays
        text = json.dumps({"names": names, "cars": car_of, "skipped": skipped, "car_order": order,
                           "coarse": config.coarse})
        atomic_write(folder / "index.json", lambda tmp: tmp.write_text(text))
        return cls(folder)


def fetch_rows(cache: "CoarseCache", rows: np.ndarray, copies, studio: str):
    """Photos, studios, coarse probabilities (copy `copies[i]` of row i) and masks of cache rows."""
    photos = torch.from_numpy(np.asarray(cache.photos[rows])).permute(0, 3, 1, 2)
    coarse = torch.from_numpy(np.stack([cache.coarse[c, r] for r, c in zip(rows, copies)]))
    masks = torch.from_numpy(np.asarray(cache.masks[rows]))
    return photos, studios_for(cache, rows, coarse, photos, studio), coarse, masks


@torch.inference_mode()
def coarse_probs(model: models.Segmenter, photos: torch.Tensor, generator: torch.Generator | None = None,
                 shift: int = 3, jitter: float = 0.1) -> torch.Tensor:
    """N x H x W uint8 (x 255): the coarse model's probabilities for one car's
    photos (N x 3 x H x W uint8) at their size, as the predictor computes
    them (inputs, model, holes filled, each crop resized into its box). With
    a `generator`, perturbed: the views moved by up to `shift` pixels, maybe
    mirrored and recoloured (all views alike, so the studio stays a studio),
    and the output moved back."""
    height, width = photos.shape[-2:]
    dy = dx = 0
    flip = False
    if generator is not None:
        draw = torch.rand(5, generator=generator)
        dy, dx = (int(v) for v in ((draw[:2] * 2 - 1) * shift).round())
        flip = bool(draw[2] < 0.5)
        gain, offset = 1 + jitter * (2 * draw[3] - 1), 255 * jitter * (2 * draw[4] - 1)
        photos = _moved(photos, dy, dx)
        photos = photos.flip(-1) if flip else photos
        photos = (photos.float() * gain + offset).round_().clamp_(0, 255).to(torch.uint8)
    inputs = car_inputs(list(photos), model.spec)
    probs = torch.sigmoid(model(inputs.x.float()))[:, 0]
    placed = place(probs, inputs.boxes, model.spec.frame, [(width, height)] * len(photos))
    out = torch.stack([p.full() for p in placed])
    out = out.flip(-1) if flip else out
    return rf._to_uint8(_moved(out[:, None], -dy, -dx)[:, 0])


def _moved(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """N x C x H x W moved by (dy, dx) pixels, the edges repeated."""
    height, width = images.shape[-2:]
    rows = (torch.arange(height) - dy).clamp_(0, height - 1)
    cols = (torch.arange(width) - dx).clamp_(0, width - 1)
    return images.index_select(-2, rows).index_select(-1, cols)


def studios_for(cache: CoarseCache, rows: np.ndarray, coarse: torch.Tensor, photos: torch.Tensor,
                studio: str) -> torch.Tensor:
    """N x 3 x H x W uint8: the studio the refiner is given for these photos."""
    if studio == "photo":
        return rf.photo_studio(photos, coarse.float() / 255)
    return torch.from_numpy(np.asarray(cache.studios[cache.studio_of[rows]])).permute(0, 3, 1, 2)


# -- the loop --------------------------------------------------------------------------------------

class Buffer:
    """`config.buffer` photos as packed tables with their band pixels and the
    masks' values there; `draw` gathers a batch of patches from all of them,
    `refresh` replaces a few. `fetch(items)` gives the photos of a list of
    `items` (any keys; `CoarseCache.fetch` for (row, copy) pairs): photos and
    studios N x 3 x H x W uint8, coarse probabilities and masks N x H x W uint8."""

    def __init__(self, fetch, items: list, config: RefinerConfig, offsets: torch.Tensor,
                 generator: torch.Generator):
        self.fetch, self.items, self.config, self.offsets, self.generator = fetch, items, config, offsets, generator
        self.centre = int(((offsets == 0).all(1)).nonzero()[0, 0])
        self.mirror = _mirror(offsets)
        self.tables: torch.Tensor | None = None
        self.bands: list[torch.Tensor] = [torch.zeros(0, dtype=torch.int64)] * config.buffer
        self.truth: list[torch.Tensor] = [torch.zeros(0)] * config.buffer
        self.colour = torch.zeros((config.buffer, 2))
        self.load(list(range(config.buffer)))

    def load(self, slots: list[int]) -> None:
        pick = torch.randint(len(self.items), (len(slots),), generator=self.generator).tolist()
        photos, studios, coarse, masks = self.fetch([self.items[i] for i in pick])
        tables = rf.packed(photos, studios, coarse, int(self.offsets.abs().max()))
        if self.tables is None:
            self.tables = tables.new_zeros((self.config.buffer, *tables.shape[1:]))
            self.frame = coarse[0].numel()  # pixels of a photo, inside the table's border
        for i, slot in enumerate(slots):
            self.tables[slot] = tables[i]
            self.bands[slot] = rf.band(coarse[i], self.config.low)
            self.truth[slot] = masks[i].reshape(-1)[self.bands[slot]].float()
        # each photo's colour jitter, photo and studio alike: gain, offset
        self.colour[slots] = (torch.rand((len(slots), 2), generator=self.generator) * 2 - 1) * self.config.jitter
        self.index = torch.cat([b + slot * self.frame for slot, b in enumerate(self.bands)])
        self.targets = torch.cat(self.truth)
        self.owner = torch.repeat_interleave(torch.arange(len(self.bands)),
                                             torch.tensor([len(b) for b in self.bands]))

    def draw(self, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(K x k x 8 patches as floats, recoloured and half of them mirrored;
        the coarse logits of their pixels; the masks' values there)."""
        pick = torch.randint(len(self.index), (count,), generator=self.generator)
        x = rf.patches(self.tables, self.index[pick], self.offsets).float()
        colour = self.colour[self.owner[pick]]
        gain, offset = (1 + colour[:, 0])[:, None, None], (128 * colour[:, 1])[:, None, None]
        x[..., :6] = x[..., :6].mul_(gain).add_(offset).clamp_(0, 255)
        x[..., 7:] = x[..., 7:].mul_(gain).clamp_(0, 255)
        flip = torch.rand(count, generator=self.generator) < 0.5
        x[flip] = x[flip][:, self.mirror]
        logit = torch.logit(x[:, self.centre, 6].div(255).clamp(1e-4, 1 - 1e-4))
        return x, logit, self.targets[pick]

    def refresh(self) -> None:
        slots = torch.randperm(len(self.bands), generator=self.generator)[:self.config.refresh]
        self.load(slots.tolist())


def _mirror(offsets: torch.Tensor) -> torch.Tensor:
    """The permutation of patch samples that mirrors them left to right."""
    where = {tuple(o): i for i, o in enumerate(offsets.tolist())}
    return torch.tensor([where[(dy, -dx)] for dy, dx in offsets.tolist()])


def train_one_epoch(refiner: rf.EdgeRefiner, criterion, optimizer: torch.optim.Optimizer, buffer: Buffer,
                    config: RefinerConfig, epoch: int, elapsed: float = 0.0,
                    progress: bool = False) -> tuple[float | None, bool, float]:
    """`config.steps_per_epoch` steps, or fewer when the time budget (of which
    `elapsed` seconds are spent) runs out: (mean training loss, or None if no
    step was made; out of time; seconds this epoch took). `criterion(logits,
    targets)` scores the refined logits: the coarse logit plus the refiner's."""
    from carmask.train import learning_rate

    budget = 60 * config.max_minutes if config.max_minutes else None
    refiner.train()
    total, seen, out_of_time, t0 = 0.0, 0, False, time.perf_counter()
    bar = tqdm(range(config.steps_per_epoch), desc=f"epoch {epoch + 1}", leave=False,
               disable=None if progress else True)  # None: on a terminal only
    for step in bar:
        done = ((elapsed + time.perf_counter() - t0) / budget if budget else
                (epoch * config.steps_per_epoch + step) / (config.epochs * config.steps_per_epoch))
        if done >= 1:
            out_of_time = True
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, done)
        x, coarse_logit, y = buffer.draw(config.batch_size)
        loss = criterion(coarse_logit + refiner(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        buffer.refresh()  # a few new photos: the buffer's photos change over the epoch
        total += loss.item()
        seen += 1
    return (total / seen if seen else None), out_of_time, time.perf_counter() - t0


@torch.no_grad()
def evaluate(refiner: rf.EdgeRefiner, cache: CoarseCache, rows: np.ndarray, config: RefinerConfig,
             batch: int = 16) -> tuple[float, float]:
    """(mean BCE over band pixels, mean per-photo dice at 512) of the refined
    probabilities, computed by `refine_batch` on copy 0 of the coarse outputs."""
    refiner.eval()
    losses, dices = [], []
    for start in range(0, len(rows), batch):
        photos, studios, coarse, truth = fetch_rows(cache, rows[start:start + batch], [0] * batch, config.studio)
        truth = truth.bool()
        refined = rf.refine_batch(refiner, photos, studios, coarse.float() / 255)
        band = rf.band(coarse, config.low)
        p = refined.reshape(-1)[band].clamp(1e-6, 1 - 1e-6)
        losses.append(F.binary_cross_entropy(p, truth.reshape(-1)[band].float(), reduction="sum").item()
                      / max(1, len(band)))
        from carmask.metrics import batch_dice
        dices += batch_dice(refined > 0.5, truth).tolist()
    return (float(np.mean(losses)), float(np.mean(dices))) if dices else (float("nan"), float("nan"))


def save_epoch(run: Run, train_loss: float, val_loss: float, val_dice: float, progress: bool = False) -> None:
    run.epoch += 1
    improved = not run.val_rows.size or val_dice > run.best_dice
    if improved:
        run.best_dice = val_dice
    lr = run.optimizer.param_groups[0]["lr"]
    with open(run.log, "a", newline="") as f:
        csv.writer(f).writerow([run.epoch, f"{train_loss:.5f}", f"{val_loss:.5f}", f"{val_dice:.5f}",
                                f"{lr:.2e}", f"{run.elapsed:.1f}"])
    if progress:
        tqdm.write(f"epoch {run.epoch}: train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
                   f"val dice {val_dice:.5f}  ({run.elapsed:.0f}s)", file=sys.stderr)
    meta = {**run.meta, "epochs": run.epoch, "steps": run.epoch * run.config.steps_per_epoch,
            "train_seconds": round(run.elapsed, 1), "val_dice": round(val_dice, 5)}
    if improved:
        rf.save(run.refiner, run.run_dir / "best.pt", meta)
    rf.save(run.refiner, run.run_dir / "model.pt", meta)
    state = {"model": run.refiner.state_dict(), "optimizer": run.optimizer.state_dict(),
             "epoch": run.epoch, "best_dice": run.best_dice, "elapsed": run.elapsed}
    atomic_write(run.run_dir / "last.pt", lambda tmp: torch.save(state, tmp))


def _resume(run: Run, last: Path) -> None:
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
        run.refiner.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.epoch, run.best_dice, run.elapsed = state["epoch"], state["best_dice"], state["elapsed"]
    except Exception as exc:  # another run's file, a truncated one, another recipe's shapes
        raise ValueError(f"{last}: cannot resume from it ({str(exc).splitlines()[0]}); "
                         f"train into a new folder, or delete it to start afresh") from None
    lines = run.log.read_text().splitlines(keepends=True) if run.log.exists() else []
    kept = lines[:1] + [line for line in lines[1:] if line.split(",", 1)[0].isdigit()
                        and int(line.split(",", 1)[0]) <= run.epoch]
    atomic_write(run.log, lambda tmp: tmp.write_text("".join(kept) or
                                                     "epoch,train_loss,val_loss,val_dice,lr,seconds\n"))

"""Training data: Kaggle-layout discovery, splits by car, an input cache, augmentation.

Model inputs are computed once, one car at a time, into memory-mapped arrays
on disk: memory stays bounded by one car whatever the dataset's size, and
every epoch after the first reads ready inputs instead of decoding JPEGs.
`build_cache` shares the cars out to several processes on a large dataset.
On a GPU the whole cache can live in GPU memory (`InputCache.keep_on`), and
augmentation runs there: a training step then reads nothing from the host.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import random
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from carmask.devices import usable_cores
from carmask.files import atomic_write
from carmask.inputs.build import car_inputs
from carmask.inputs.decode import decode
from carmask.inputs.resize import resize_map
from carmask.inputs.spec import InputSpec, NotEnoughViews
from carmask.io import find_photos, read_mask
from carmask.kaggle import group_by_car, mask_path, masks_dir_for, photos_dir_for
from carmask.outcomes import ImageError, skip


@dataclass
class Example:
    photo: Path
    mask: Path


def discover(data_dir) -> dict[str, list[Example]]:
    """{car: examples} for a Kaggle layout (`train/` + `train_masks/`)."""
    photos_dir = photos_dir_for(data_dir)
    masks_dir = masks_dir_for(photos_dir)
    if not masks_dir.is_dir():
        raise FileNotFoundError(f"no masks folder for {photos_dir} (expected {masks_dir})")
    cars = {}
    for photo_set in group_by_car(find_photos([photos_dir])):
        if photo_set.car is None:
            continue  # photos not named <car>_<NN> cannot be grouped for training
        cars[photo_set.car] = [Example(p, mask_path(p, masks_dir)) for p in photo_set.paths]
    if not cars:
        raise FileNotFoundError(f"no <car>_<NN>.jpg photos found in {photos_dir}")
    return cars


def split_by_car(cars: list[str], val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Shuffle the cars (never the images) and hold `val_fraction` of them out."""
    order = sorted(cars)
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(order) * val_fraction)) if val_fraction > 0 and len(order) > 1 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


# Bumped whenever the way inputs are computed changes, so that no cache built
# the old way is reused. 2: full-resolution decoding and torch resizes.
INPUTS_VERSION = 2


def cache_key(cars: dict[str, list[Example]], spec: InputSpec) -> str:
    """The name of the cache folder for these cars' photos and this input spec."""
    return hashlib.sha1(
        json.dumps([INPUTS_VERSION, spec.to_dict(), sorted(str(e.photo) for ex in cars.values() for e in ex)]).encode()
    ).hexdigest()[:16]


def to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on `device`. To a GPU through pinned memory, without
    waiting: a plain copy from pageable memory would first drain the GPU's queue."""
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


class InputCache:
    """Model inputs (N x H x W x C uint8) and soft targets (N x H x W uint8,
    probability x 255) for a list of cars, memory-mapped from `folder`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.index = json.loads((self.folder / "index.json").read_text())
        self.inputs = np.load(self.folder / "inputs.npy", mmap_mode="r")
        self.targets = np.load(self.folder / "targets.npy", mmap_mode="r")
        self.names = self.index["names"]
        self.cars = self.index["cars"]
        self.skipped = [ImageError.from_dict(error) for error in self.index["skipped"]]  # with their kinds
        self.held: tuple[torch.Tensor, torch.Tensor] | None = None  # see keep_on

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def build(
        cls, cars: dict[str, list[Example]], spec: InputSpec, folder: Path, progress: bool = True, device=None
    ) -> InputCache:
        """Compute (or reuse) the cache for these cars and this input spec;
        `device`: compute the inputs there (photos are decoded on the CPU)."""
        folder = Path(folder) / cache_key(cars, spec)
        if (folder / "index.json").exists() and _skips_have_kinds(folder):
            return cls(folder)
        folder.mkdir(parents=True, exist_ok=True)
        total = sum(len(v) for v in cars.values())
        width, height = spec.size
        inputs = np.lib.format.open_memmap(
            folder / "inputs.tmp.npy", "w+", np.uint8, (total, height, width, spec.in_channels)
        )
        targets = np.lib.format.open_memmap(folder / "targets.tmp.npy", "w+", np.uint8, (total, height, width))
        names, car_of, skipped, n = [], [], [], 0
        for car, examples in tqdm(
            sorted(cars.items()), desc="preparing inputs", unit="car", disable=None if progress else True
        ):  # None: on a terminal only
            photos, masks, kept = [], [], []
            for example in examples:
                try:  # on the stored pixel grid, the grid of the masks
                    photo = decode(example.photo, upright=False).to(device or "cpu")
                    masks.append(read_mask(example.mask, expected_size=(photo.shape[2], photo.shape[1])))
                    photos.append(photo)
                    kept.append(example)
                except ImageError as exc:
                    skipped.append(exc.as_dict())
            if not photos:
                continue
            try:  # the predictor's own inputs for these photos (Predictor.model_inputs)
                x = car_inputs(photos, spec)
            except NotEnoughViews as exc:  # too few readable views for a background
                skipped += [skip(e.photo, exc).as_dict() for e in kept]
                continue
            inputs[n : n + len(kept)] = x.x.permute(0, 2, 3, 1).cpu().numpy()
            targets[n : n + len(kept)] = soft_targets(masks, x.boxes, spec, device)
            names += [e.photo.name for e in kept]
            car_of += [car] * len(kept)
            n += len(kept)
        inputs.flush(), targets.flush()
        del inputs, targets
        _shrink(folder / "inputs.tmp.npy", folder / "inputs.npy", n)
        _shrink(folder / "targets.tmp.npy", folder / "targets.npy", n)
        _write_index(folder, {"names": names, "cars": car_of, "skipped": skipped, "spec": spec.to_dict()})
        return cls(folder)

    def channel_stats(self, rows: np.ndarray, sample: int = 512) -> tuple[list[float], list[float]]:
        """Per-channel mean and std over (a sample of) the given rows."""
        rng = np.random.default_rng(0)
        pick = np.sort(rng.choice(rows, size=min(sample, len(rows)), replace=False))
        x = np.asarray(self.inputs[pick], dtype=np.float64).reshape(-1, self.inputs.shape[-1])
        return x.mean(0).tolist(), np.maximum(x.std(0), 1.0).tolist()

    def keep_on(self, device, share: float = 0.5) -> bool:
        """Hold the whole cache (uint8) in `device` memory when it takes at most
        `share` of the memory free there (CUDA), so that `batch` gathers rows
        on the device: no host reads or copies per training step. Returns
        whether it does; otherwise `batch` reads the memory-mapped files."""
        device = torch.device(device)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if self.inputs.nbytes + self.targets.nbytes > share * free:
                return False
        held = []
        for array in (self.inputs, self.targets):
            tensor = torch.empty(array.shape, dtype=torch.uint8, device=device)
            for start in range(0, len(array), 256):
                tensor[start : start + 256] = to_device(torch.from_numpy(np.array(array[start : start + 256])), device)
            held.append(tensor)
        self.held = (held[0], held[1])
        return True

    def batch(self, rows: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs N x C x H x W float in [0, 255] (channels-last in memory) and
        targets N x 1 x H x W in [0, 1]."""
        rows = np.sort(rows)  # memory-mapped reads in file order
        device = torch.device(device)
        if self.held is not None and self.held[0].device.type == device.type:
            index = to_device(torch.from_numpy(rows), device)
            x, y = self.held[0].index_select(0, index), self.held[1].index_select(0, index)
        else:
            x = to_device(torch.from_numpy(np.ascontiguousarray(self.inputs[rows])), device)
            y = to_device(torch.from_numpy(np.ascontiguousarray(self.targets[rows])), device)
        return x.permute(0, 3, 1, 2).float(), y[:, None].float() / 255.0


def soft_targets(masks: list[np.ndarray], boxes, spec: InputSpec, device=None) -> np.ndarray:
    """Full-size 0/1 masks as the network's targets: resized (bilinear,
    antialiased) to the frame, cropped to each photo's box and resized to the
    network's size, as probabilities x 255 (uint8); computed on `device`."""
    soft = torch.cat(
        [resize_map(torch.from_numpy(m).to(device or "cpu").float()[None, None], spec.frame) for m in masks]
    )
    out = torch.cat(
        [resize_map(p[None, :, b.top : b.bottom, b.left : b.right], spec.size) for p, b in zip(soft, boxes)]
    )
    return (out[:, 0] * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def build_cache(
    cars: dict[str, list[Example]],
    spec: InputSpec,
    folder: Path,
    workers: int | None = None,
    progress: bool = True,
    device=None,
) -> InputCache:
    """`InputCache.build` in `workers` processes (default: one per usable core
    where there are at least 4, at most one per 4 cars; each costs a Python
    start, which two cores do not win back). Each builds a contiguous share of
    the cars, in car order, and the shares are joined into the cache one
    process would build. On a CUDA `device` it is built in this process, on
    the GPU: no worker processes (16 of them once stalled a GPU machine)."""
    folder = Path(folder)
    final = folder / cache_key(cars, spec)
    cores = usable_cores()
    workers = min(workers, len(cars)) if workers else min(cores if cores >= 4 else 1, len(cars) // 4)
    on_gpu = device is not None and torch.device(device).type == "cuda"
    if on_gpu or workers <= 1 or (final / "index.json").exists():
        return InputCache.build(cars, spec, folder, progress=progress, device=device if on_gpu else None)
    names = sorted(cars)
    shares = [names[len(names) * i // workers : len(names) * (i + 1) // workers] for i in range(workers)]
    scratch = folder / f"{final.name}.shares"
    # spawn: a fresh interpreter per worker (fork would copy torch's threads and state).
    with (
        ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool,
        tqdm(total=len(names), desc="preparing inputs", unit="car", disable=None if progress else True) as bar,
    ):  # None: on a terminal only
        futures = {
            pool.submit(_build_share, {c: cars[c] for c in share}, spec, scratch / str(i)): len(share)
            for i, share in enumerate(shares)
        }
        for future in as_completed(futures):
            bar.update(futures[future])
        parts = [InputCache(future.result()) for future in futures]
    _join(parts, final)
    shutil.rmtree(scratch)
    return InputCache(final)


def _build_share(cars: dict[str, list[Example]], spec: InputSpec, folder: Path) -> Path:
    torch.set_num_threads(1)  # one process per core: torch's own threads would oversubscribe them
    return InputCache.build(cars, spec, folder, progress=False).folder


def _join(parts: list[InputCache], folder: Path) -> None:
    """Write caches one after the other as one cache; index.json last (it marks
    the cache complete), its lists joined, its other entries from the first part."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("inputs", "targets"):
        arrays = [getattr(part, name) for part in parts]
        out = np.lib.format.open_memmap(
            folder / f"{name}.npy", "w+", np.uint8, (sum(len(a) for a in arrays), *arrays[0].shape[1:])
        )
        start = 0
        for array in arrays:
            for row in range(0, len(array), 256):
                chunk = array[row : row + 256]
                out[start + row : start + row + len(chunk)] = chunk
            start += len(array)
        out.flush()
        del out
    index = {
        key: sum((part.index[key] for part in parts), []) if isinstance(value, list) else value
        for key, value in parts[0].index.items()
    }
    _write_index(folder, index)


def _skips_have_kinds(folder: Path) -> bool:
    """Whether the cache's skipped photos carry their kinds (a cache written before
    they did, with skips, is built again: its sentences are not read back)."""
    return all(isinstance(error, dict) for error in json.loads((folder / "index.json").read_text())["skipped"])


def _write_index(folder: Path, index: dict) -> None:
    """index.json, the mark of a finished cache: whole or not there (a run
    killed while writing it must not leave a cache that looks finished)."""
    text = json.dumps(index)
    atomic_write(folder / "index.json", lambda tmp: tmp.write_text(text))


def _shrink(tmp: Path, final: Path, n: int) -> None:
    """Copy the first n rows of a memmapped array into its final file."""
    source = np.load(tmp, mmap_mode="r")
    target = np.lib.format.open_memmap(final, "w+", source.dtype, (n, *source.shape[1:]))
    for start in range(0, n, 256):
        end = min(start + 256, n)  # rows past n are those of skipped photos
        target[start:end] = source[start:end]
    target.flush()
    del source, target
    tmp.unlink()


def augment(
    x: torch.Tensor,
    y: torch.Tensor,
    spec: InputSpec,
    generator: torch.Generator,
    shift: float = 0.06,
    scale: float = 0.1,
    degrees: float = 5.0,
    jitter: float = 0.15,
    part: tuple[int, int] = (0, 1),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips, shift/scale/rotation and colour jitter on a batch.

    Every channel moves with the same geometry. Jitter is an affine change
    a*photo + b applied alike to the photo and its background, so the
    difference channels become a*diff: they stay consistent with the photo.

    `part=(k, parts)`: x is the k-th of `parts` equal shares of a batch (one
    process's share under torchrun). The draws are made for the whole batch,
    so the shares are augmented exactly as the whole batch would be.
    """
    n, device = x.shape[0], x.device
    k, parts = part
    # Seven draws per image of the whole batch, this share's columns, moved to
    # the device in one copy with the channel mask (no wait on the GPU's queue).
    draws = torch.rand(7, n * parts, generator=generator)[:, k * n : (k + 1) * n]
    is_rgb = torch.from_numpy(np.repeat(spec.channels, 3) == "rgb")
    draws, is_rgb = to_device(draws.contiguous(), device), to_device(is_rgb, device)[None, :, None, None]

    def uniform(row, low, high):
        return draws[row] * (high - low) + low

    flip = uniform(0, 0, 1) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    y = torch.where(flip[:, None, None, None], y.flip(-1), y)
    angle = uniform(1, -degrees, degrees) * math.pi / 180
    zoom = uniform(2, 1 - scale, 1 + scale)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, uniform(3, -shift, shift)], 1), torch.stack([sin, cos, uniform(4, -shift, shift)], 1)],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    y = F.grid_sample(y, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gain = uniform(5, 1 - jitter, 1 + jitter)[:, None, None, None]
    offset = uniform(6, -jitter, jitter)[:, None, None, None] * 255
    x = torch.where(is_rgb, x * gain + offset, x * gain).clamp(0, 255)
    return x, y

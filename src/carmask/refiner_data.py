"""The refiner's training data: each photo at 512x512 with its mask, its car's studio and
the coarse models' probabilities, cached on disk (memory-mapped), one car at a time.

For each source (a coarse model and where its studio comes from: `set`, the
median of the views that show the studio; `photo`, the single-photo
estimate made from the photo alone when it is fetched) the cache holds the
coarse probabilities as the predictor computes them (copy 0) and, for the
coarse models' own training cars, `perturb` perturbed copies: the same
model on the car's views moved by a few pixels, maybe mirrored, recoloured,
its output moved back (`coarse_probs`). On its own training cars the coarse
model is a little better than on new cars (dice 0.9923 against 0.9917 for
`multiview-fast`); the copies draw its errors afresh.

The training buffers (`Buffer`: band pixels' patches for the point head;
`TileBuffer`: band tiles for the tile CNN) hold a few cached photos at a time
and draw each step's examples from them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from carmask import models
from carmask.files import atomic_write
from carmask.inputs.build import car_inputs
from carmask.inputs.decode import decode
from carmask.inputs.spec import MIN_VIEWS, NotEnoughViews
from carmask.io import read_mask
from carmask.models import refiner_frames
from carmask.outcomes import ImageError
from carmask.postprocess import place
from carmask.train_config import RefinerConfig

STUDIOS = ("set", "photo")


class CoarseCache:
    """Memory-mapped: `photos` N x H x W x 3, `masks` N x H x W, `coarse`
    S x C x N x H x W (probability x 255 of source s, copy c; copy 0 as the
    predictor computes it) and per car `studios` K x H x W x 3 (the median of
    the views that show the studio, by the first `set` source's copy 0)."""

    def __init__(self, folder: Path):
        self.folder = folder
        index = json.loads((folder / "index.json").read_text())
        self.cars, self.names, self.skipped = index["cars"], index["names"], index["skipped"]
        self.sources = [tuple(s) for s in index["sources"]]
        car_order = {car: k for k, car in enumerate(index["car_order"])}
        self.studio_of = np.array([car_order[c] for c in self.cars], dtype=np.int64)
        self.photos = np.load(folder / "photos.npy", mmap_mode="r")
        self.masks = np.load(folder / "masks.npy", mmap_mode="r")
        self.studios = np.load(folder / "studios.npy", mmap_mode="r")
        self.coarse = np.load(folder / "coarse.npy", mmap_mode="r")
        self.copies = self.coarse.shape[1]

    def fetch(self, items: list[tuple[int, int, int]]):
        """(row, source, copy) items as tensors: photos and studios N x 3 x H x W
        uint8, coarse probabilities and masks N x H x W uint8; read in file order."""
        order = sorted(range(len(items)), key=lambda i: items[i])
        rows = np.array([items[i][0] for i in order])
        photos = torch.from_numpy(np.asarray(self.photos[rows])).permute(0, 3, 1, 2)
        coarse = torch.from_numpy(np.stack([self.coarse[items[i][1], items[i][2], items[i][0]] for i in order]))
        masks = torch.from_numpy(np.asarray(self.masks[rows]))
        studios = torch.from_numpy(np.asarray(self.studios[self.studio_of[rows]])).permute(0, 3, 1, 2)
        alone = [j for j, i in enumerate(order) if self.sources[items[i][1]][1] == "photo"]
        if alone:
            studios = studios.clone()
            studios[alone] = refiner_frames.photo_studio(photos[alone], coarse[alone].float() / 255)
        back = torch.from_numpy(np.argsort(order))
        return photos[back], studios[back], coarse[back], masks[back]

    # The cache's one pass: key, reuse, then per car its photos, masks, studios and coarse copies,
    # each step a short branch; split into helpers it would pass a dozen arrays between them.
    @classmethod
    def build(  # noqa: C901
        cls,
        cars: dict,
        sources: list[tuple[str, str]],
        perturb: int,
        perturbed: set[str],
        folder: Path,
        seed: int = 0,
        progress: bool = True,
    ) -> CoarseCache:
        """The cache of these cars (name -> examples) for these sources, reused if built before."""
        if not sources or any(studio not in STUDIOS for _, studio in sources):
            raise ValueError(f"sources are (coarse model, studio) pairs, the studio one of {', '.join(STUDIOS)}")
        key = json.dumps(
            [
                4,
                [(m, s, models.resolve(m).stat().st_size) for m, s in sources],
                perturb,
                seed,
                sorted(perturbed),
                sorted(str(e.photo) for ex in cars.values() for e in ex),
            ]
        )
        folder = Path(folder) / f"refiner-{hashlib.sha1(key.encode()).hexdigest()[:16]}"
        if (folder / "index.json").exists():
            return cls(folder)
        folder.mkdir(parents=True, exist_ok=True)
        coarse_models = [models.load(name)[0] for name, _ in sources]
        set_source = next((k for k, (_, studio) in enumerate(sources) if studio == "set"), None)
        total = sum(len(v) for v in cars.values())
        first = next(e.photo for ex in cars.values() for e in ex)
        size = tuple(decode(first, upright=False).shape[-2:])  # (height, width): the dataset's photos' own

        def memmap(name, shape):
            return np.lib.format.open_memmap(folder / f"{name}.npy", "w+", np.uint8, shape)

        arrays = {
            "photos": memmap("photos", (total, *size, 3)),
            "masks": memmap("masks", (total, *size)),
            "studios": memmap("studios", (len(cars), *size, 3)),
            "coarse": memmap("coarse", (len(sources), 1 + perturb, total, *size)),
        }
        generator = torch.Generator().manual_seed(seed)
        names, car_of, skipped, order, n = [], [], [], [], 0
        for car, examples in tqdm(
            sorted(cars.items()), desc="coarse outputs", unit="car", disable=None if progress else True
        ):  # None: on a terminal only
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
            if len(photos) < MIN_VIEWS:  # no studio without a set
                skipped += [
                    f"{e.photo}: its car has {len(photos)} readable views, a studio needs {MIN_VIEWS}" for e in kept
                ]
                continue
            batch = torch.stack(photos)
            try:
                copies = [
                    [coarse_probs(model, batch)]
                    + [coarse_probs(model, batch, generator) for _ in range(perturb) if car in perturbed]
                    for model in coarse_models
                ]
            except NotEnoughViews as exc:
                skipped += [f"{e.photo}: {exc}" for e in kept]
                continue
            plain = copies[set_source][0].float() / 255 if set_source is not None else None
            rows = slice(n, n + len(kept))
            arrays["photos"][rows] = batch.permute(0, 2, 3, 1).numpy()
            arrays["masks"][rows] = np.stack(masks)
            arrays["studios"][len(order)] = (
                refiner_frames.set_studios(batch, [len(photos)], plain)[0].permute(1, 2, 0).numpy()
            )
            for s, made in enumerate(copies):
                for c in range(1 + perturb):  # on cars without copies, copy 0 again (never drawn)
                    arrays["coarse"][s, c, rows] = made[min(c, len(made) - 1)].numpy()
            names += [e.photo.name for e in kept]
            car_of += [car] * len(kept)
            order.append(car)
            n += len(kept)
        for array in arrays.values():
            array.flush()
        del arrays
        text = json.dumps(
            {
                "names": names,
                "cars": car_of,
                "skipped": skipped,
                "car_order": order,
                "sources": [list(s) for s in sources],
            }
        )
        atomic_write(folder / "index.json", lambda tmp: tmp.write_text(text))  # last: marks it complete
        return cls(folder)


@torch.inference_mode()
def coarse_probs(
    model: models.Segmenter,
    photos: torch.Tensor,
    generator: torch.Generator | None = None,
    shift: int = 3,
    jitter: float = 0.1,
) -> torch.Tensor:
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
    return refiner_frames.to_uint8(_moved(out[:, None], -dy, -dx)[:, 0])


def _moved(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """N x C x H x W moved by (dy, dx) pixels, the edges repeated."""
    height, width = images.shape[-2:]
    rows = (torch.arange(height) - dy).clamp_(0, height - 1)
    cols = (torch.arange(width) - dx).clamp_(0, width - 1)
    return images.index_select(-2, rows).index_select(-1, cols)


# -- the training buffers ---------------------------------------------------------------------------


class Buffer:
    """`config.buffer` photos as packed tables with their band pixels and the
    masks' values there; `draw` gathers a batch of patches from all of them,
    `refresh` replaces a few. `fetch(items)` gives the photos of a list of
    `items` (any keys; `CoarseCache.fetch` for (row, copy) pairs): photos and
    studios N x 3 x H x W uint8, coarse probabilities and masks N x H x W uint8."""

    def __init__(self, fetch, items: list, config: RefinerConfig, offsets: torch.Tensor, generator: torch.Generator):
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
        tables = refiner_frames.packed(photos, studios, coarse, int(self.offsets.abs().max()))
        if self.tables is None:
            self.tables = tables.new_zeros((self.config.buffer, *tables.shape[1:]))
            self.frame = coarse[0].numel()  # pixels of a photo, inside the table's border
        for i, slot in enumerate(slots):
            self.tables[slot] = tables[i]
            self.bands[slot] = refiner_frames.band(coarse[i], self.config.low)
            self.truth[slot] = masks[i].reshape(-1)[self.bands[slot]].float()
        # each photo's colour jitter, photo and studio alike: gain, offset
        self.colour[slots] = (torch.rand((len(slots), 2), generator=self.generator) * 2 - 1) * self.config.jitter
        self.index = torch.cat([b + slot * self.frame for slot, b in enumerate(self.bands)])
        self.targets = torch.cat(self.truth)
        self.owner = torch.repeat_interleave(torch.arange(len(self.bands)), torch.tensor([len(b) for b in self.bands]))

    def draw(self, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(K x k x 8 patches as floats, recoloured and half of them mirrored;
        the coarse logits of their pixels; the masks' values there)."""
        pick = torch.randint(len(self.index), (count,), generator=self.generator)
        x = refiner_frames.patches(self.tables, self.index[pick], self.offsets).float()
        colour = self.colour[self.owner[pick]]
        gain, offset = (1 + colour[:, 0])[:, None, None], (128 * colour[:, 1])[:, None, None]
        x[..., :6] = x[..., :6].mul_(gain).add_(offset).clamp_(0, 255)
        x[..., 7:] = x[..., 7:].mul_(gain).clamp_(0, 255)
        flip = torch.rand(count, generator=self.generator) < 0.5
        x[flip] = x[flip][:, self.mirror]
        logit = torch.logit(x[:, self.centre, 6].div(255).clamp(1e-4, 1 - 1e-4))
        return x, logit, self.targets[pick]

    def refresh(self) -> None:
        slots = torch.randperm(len(self.bands), generator=self.generator)[: self.config.refresh]
        self.load(slots.tolist())


class TileBuffer:
    """`config.buffer` photos as packed tables (`refiner.packed`) with their
    masks; `draw` cuts `count` tiles of `config.tile` pixels, each holding a
    band pixel at a random place, inside the frame (as the inference's grid
    has them), recoloured and half of them mirrored."""

    def __init__(self, fetch, items: list, config: RefinerConfig, generator: torch.Generator):
        self.fetch, self.items, self.config, self.generator = fetch, items, config, generator
        self.tables: torch.Tensor | None = None
        self.masks: torch.Tensor | None = None
        self.bands: list[torch.Tensor] = [torch.zeros(0, dtype=torch.int64)] * config.buffer
        self.colour = torch.zeros((config.buffer, 2))
        self.load(list(range(config.buffer)))

    def load(self, slots: list[int]) -> None:
        pick = torch.randint(len(self.items), (len(slots),), generator=self.generator).tolist()
        photos, studios, coarse, masks = self.fetch([self.items[i] for i in pick])
        tables = refiner_frames.packed(photos, studios, coarse)
        if self.tables is None:
            self.tables = tables.new_zeros((self.config.buffer, *tables.shape[1:]))
            self.masks = masks.new_zeros((self.config.buffer, *masks.shape[1:]))
            self.frame = coarse[0].numel()
        for i, slot in enumerate(slots):
            self.tables[slot] = tables[i]
            self.masks[slot] = masks[i]
            self.bands[slot] = refiner_frames.band(coarse[i], self.config.low)
        self.colour[slots] = (torch.rand((len(slots), 2), generator=self.generator) * 2 - 1) * self.config.jitter
        self.index = torch.cat([b + slot * self.frame for slot, b in enumerate(self.bands)])

    def draw(self, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(K x 8 x T x T planes as floats; the coarse logits there; the masks'
        values; 1 at the band's pixels, where the loss counts)."""
        t = self.config.tile
        _, height, width = self.tables.shape
        pick = self.index[torch.randint(len(self.index), (count,), generator=self.generator)]
        image, pixel = pick.div(self.frame, rounding_mode="floor"), pick.remainder(self.frame)
        row, col = pixel.div(width, rounding_mode="floor"), pixel.remainder(width)
        shift = torch.randint(t, (2, count), generator=self.generator)
        top = (row - shift[0]).clamp(0, height - t)
        left = (col - shift[1]).clamp(0, width - t)
        d = torch.arange(t)
        at = (
            (image[:, None, None] * height + top[:, None, None] + d[None, :, None]) * width
            + left[:, None, None]
            + d[None, None, :]
        ).reshape(-1)
        x = self.tables.reshape(-1).index_select(0, at).view(torch.uint8).view(count, t, t, 8)
        y = self.masks.reshape(-1).index_select(0, at).view(count, t, t).float()
        x = x.permute(0, 3, 1, 2).float()
        coarse = x[:, 6].clone()
        weight = ((coarse > round(self.config.low * 255)) & (coarse < round((1 - self.config.low) * 255))).float()
        colour = self.colour[image]
        gain, offset = (1 + colour[:, 0])[:, None, None, None], (128 * colour[:, 1])[:, None, None, None]
        x[:, :6] = x[:, :6].mul_(gain).add_(offset).clamp_(0, 255)
        x[:, 7:] = x[:, 7:].mul_(gain).clamp_(0, 255)
        flip = torch.rand(count, generator=self.generator) < 0.5
        x[flip], y[flip], weight[flip], coarse[flip] = (
            x[flip].flip(-1),
            y[flip].flip(-1),
            weight[flip].flip(-1),
            coarse[flip].flip(-1),
        )
        logit = torch.logit(coarse.div(255).clamp(1e-4, 1 - 1e-4))
        return x, logit, y, weight

    def refresh(self) -> None:
        slots = torch.randperm(len(self.bands), generator=self.generator)[: self.config.refresh]
        self.load(slots.tolist())


def _mirror(offsets: torch.Tensor) -> torch.Tensor:
    """The permutation of patch samples that mirrors them left to right."""
    where = {tuple(o): i for i, o in enumerate(offsets.tolist())}
    return torch.tensor([where[(dy, -dx)] for dy, dx in offsets.tolist()])

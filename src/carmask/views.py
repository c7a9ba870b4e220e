"""Multi-view preprocessing on the predictor's device: a car's background from its turntable views.

The studio does not move while the car turns, so the per-pixel median of a
car's views is the empty studio; a photo's difference from it lights up the
car. `InputSpec` says which channels a model takes and at what size, and
`model_inputs` builds them, in torch on whatever device the photos are on,
for all the cars of a batch at once: the one path shared by training and
prediction.

From full-resolution photos (3 x H x W uint8, see `decode`):

1. `frames`: one antialiased bilinear resize to the spec's frame (uint8);
2. `backgrounds`: each car's per-pixel median (of an even count: the mean of
   the two middle values, truncated) and rounded mean;
3. `|photo - background|` differences; the pixels that differ by more than
   `crop_fuzz` (RMS over the channels) give the crop box (grown by
   `crop_margin`) and tell whether a set shares one studio (`differing`);
4. `crop_resize`: each photo's channels cropped to its box and resized
   (antialiased bilinear) to the network's size.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

MIN_VIEWS = 3
CHANNELS = {"rgb": 3, "median_diff": 3, "mean_diff": 3}


class NotEnoughViews(ValueError):
    """A background needs at least MIN_VIEWS photos of the same car."""


class Box(NamedTuple):
    """A crop box in frame pixels: left, top, right, bottom (exclusive)."""
    left: int
    top: int
    right: int
    bottom: int


class Backgrounds(NamedTuple):
    median: torch.Tensor  # uint8 K x 3 x H x W, one per car
    mean: torch.Tensor    # uint8 K x 3 x H x W


@dataclass(frozen=True)
class InputSpec:
    """What a model sees. Sizes are (width, height).

    `frame` is the size at which photos are compared with their background
    (and cropped, for the seed); `size` is the network's input size.
    """
    channels: tuple[str, ...] = ("rgb", "median_diff")
    size: tuple[int, int] = (100, 100)
    frame: tuple[int, int] | None = None
    crop: bool = False
    crop_fuzz: float = 0.15
    crop_margin: float = 0.03

    def __post_init__(self):
        unknown = set(self.channels) - set(CHANNELS)
        if unknown:
            raise ValueError(f"unknown input channels {sorted(unknown)}; known: {sorted(CHANNELS)}")
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "size", tuple(self.size))
        object.__setattr__(self, "frame", tuple(self.frame or self.size))

    @property
    def in_channels(self) -> int:
        return sum(CHANNELS[c] for c in self.channels)

    @property
    def needs_views(self) -> bool:
        return any(c.endswith("_diff") for c in self.channels) or self.crop

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "InputSpec":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


# -- resizing ------------------------------------------------------------------------------------

def resize_image(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of N x C x H x W uint8 images to (width, height).

    On the CPU, torch's uint8 kernel (fastest on 3 channels, channels last);
    a GPU has none, so there through float32, rounded back.
    """
    width, height = size
    if images.shape[-1] == width and images.shape[-2] == height:
        return images
    if images.device.type == "cpu":
        return F.interpolate(images, size=(height, width), mode="bilinear", antialias=True)
    out = F.interpolate(images.float(), size=(height, width), mode="bilinear", antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def resize_map(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of N x C x H x W float maps (probabilities, soft masks)
    to (width, height); antialiased where it shrinks."""
    width, height = size
    if maps.shape[-1] == width and maps.shape[-2] == height:
        return maps
    shrinking = width < maps.shape[-1] or height < maps.shape[-2]
    return F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A numpy image (uint8 H x W x C) or map (float H x W) resized to (width,
    height) by the same torch resizes, for callers outside the pipeline."""
    tensor = torch.from_numpy(np.require(image, requirements=["C", "W"]))  # a copy if read-only
    if image.dtype == np.uint8:
        planes = tensor[None, :, :, None] if image.ndim == 2 else tensor[None].permute(0, 3, 1, 2)
        out = resize_image(planes, size).permute(0, 2, 3, 1)[0]
        return out[..., 0].numpy() if image.ndim == 2 else out.contiguous().numpy()
    maps = tensor.float().reshape(image.shape[0], image.shape[1], -1).permute(2, 0, 1)[None]
    out = resize_map(maps, size)[0].permute(1, 2, 0)
    return out.reshape(size[1], size[0], *image.shape[2:]).contiguous().numpy()


def frames(photos: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Full-resolution photos (3 x H x W uint8, any sizes; those already at
    `size` are taken as they are) -> N x 3 x h x w uint8 at the frame `size`
    (width, height), channels last."""
    width, height = size
    out = torch.empty((len(photos), height, width, 3), dtype=torch.uint8,
                      device=photos[0].device if photos else "cpu").permute(0, 3, 1, 2)
    for i, photo in enumerate(photos):
        out[i] = resize_image(photo[None], size)[0]
    return out


# -- backgrounds and differences -----------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _median_network(n: int) -> tuple[tuple[int, int], ...]:
    """Compare-exchange pairs that put the two middle values of n in place:
    Batcher's merge-exchange sorting network (Knuth 5.2.2 M), less the pairs
    that cannot reach the middle."""
    pairs, t = [], max(1, (n - 1).bit_length())
    p = 1 << (t - 1)
    while p > 0:
        q, r, d = 1 << (t - 1), 0, p
        while d > 0:
            pairs += [(i, i + d) for i in range(n - d) if i & p == r]
            d, q, r = q - p, q >> 1, p
        p >>= 1
    needed, kept = {(n - 1) // 2, n // 2}, []
    for i, j in reversed(pairs):
        if i in needed or j in needed:
            kept.append((i, j))
            needed |= {i, j}
    return tuple(reversed(kept))


def _median(views: list[torch.Tensor]) -> torch.Tensor:
    """Per-pixel median of equally shaped uint8 tensors, as numpy's
    `np.median(...).astype(np.uint8)`: for an even count, the mean of the two
    middle values, truncated."""
    values, n = list(views), len(views)
    for i, j in _median_network(n):
        values[i], values[j] = torch.minimum(values[i], values[j]), torch.maximum(values[i], values[j])
    low, high = values[(n - 1) // 2], values[n // 2]
    return low if n % 2 else ((low.short() + high.short()) // 2).to(torch.uint8)


def _mean(views: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean over dim 1 of uint8 views, rounded half to even (numpy's
    round). In float32 the sums are exact and a mean that is a half is too."""
    return views.sum(dim=1, dtype=torch.float32).div_(views.shape[1]).round_().to(torch.uint8)


def backgrounds(frames: torch.Tensor, counts: Sequence[int]) -> Backgrounds:
    """Median and mean of each car's views: `frames` (N x 3 x h x w uint8) holds
    the cars one after another, `counts[k]` views of car k. Cars with the same
    count are computed together."""
    if min(counts, default=MIN_VIEWS) < MIN_VIEWS:
        raise NotEnoughViews(
            f"a background needs at least {MIN_VIEWS} views of the same car, got {min(counts)}")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
    median = frames.new_empty((len(counts), *frames.shape[1:]))
    mean = frames.new_empty((len(counts), *frames.shape[1:]))
    for count in sorted(set(counts)):
        cars = [k for k, c in enumerate(counts) if c == count]
        views = torch.stack([frames[starts[k]:starts[k] + count] for k in cars])  # cars x count x 3 x h x w
        median[cars] = _median(list(views.unbind(1)))
        mean[cars] = _mean(views)
    return Backgrounds(median, mean)


def absdiff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| of uint8 tensors, uint8."""
    return torch.maximum(a, b) - torch.minimum(a, b)


def differing(diff: torch.Tensor, fuzz: float) -> torch.Tensor:
    """N x h x w: pixels of an N x 3 x h x w difference whose RMS over the
    channels is above `fuzz` of the full range (ImageMagick's `-fuzz N%`)."""
    # sqrt(mean of squares) > fuzz * 255, i.e. the norm over 3 channels > sqrt(3) * fuzz * 255
    return torch.linalg.vector_norm(diff.float(), dim=1) > math.sqrt(3) * fuzz * 255


def crop_boxes(differ: torch.Tensor, margin: float) -> torch.Tensor:
    """N x 4 (left, top, right, bottom) bounding boxes of the differing pixels,
    grown by `margin` of the frame on each side; the whole frame where none differ."""
    n, height, width = differ.shape
    rows, cols = differ.any(dim=2), differ.any(dim=1)
    top = rows.to(torch.uint8).argmax(dim=1)
    bottom = height - rows.flip(1).to(torch.uint8).argmax(dim=1)
    left = cols.to(torch.uint8).argmax(dim=1)
    right = width - cols.flip(1).to(torch.uint8).argmax(dim=1)
    dx, dy = round(margin * width), round(margin * height)
    boxes = torch.stack([(left - dx).clamp(min=0), (top - dy).clamp(min=0),
                         (right + dx).clamp(max=width), (bottom + dy).clamp(max=height)], dim=1)
    whole = torch.tensor([0, 0, width, height], device=differ.device)
    return torch.where(rows.any(dim=1, keepdim=True), boxes, whole)


def crop_resize(planes: Sequence[torch.Tensor], boxes: Sequence[Box], size: tuple[int, int]) -> torch.Tensor:
    """Photo i of each of the N x 3 x h x w uint8 `planes` cropped to box i and
    resized (antialiased bilinear) to `size` (width, height): N x C x H x W
    uint8, the planes' channels one after another."""
    if planes[0].device.type != "cpu":
        planes = [torch.cat(list(planes), dim=1)]  # a GPU resizes all channels in one kernel
    if not boxes:
        return planes[0].new_empty((0, sum(p.shape[1] for p in planes), size[1], size[0]))
    return torch.cat([torch.cat([resize_image(p[i:i + 1, :, box.top:box.bottom, box.left:box.right], size)
                                 for p in planes], dim=1) for i, box in enumerate(boxes)])


# -- model inputs --------------------------------------------------------------------------------

@dataclass
class Inputs:
    """What the network gets for a batch of photos, and what was learned on the way."""
    x: torch.Tensor               # N x C x H x W uint8 at `spec.size`
    boxes: list[Box]              # the crop box of each photo, in frame pixels
    differing: list[float] | None  # per photo: share of the frame that differs from its car's median


def model_inputs(frames: torch.Tensor, counts: Sequence[int], spec: InputSpec) -> Inputs:
    """The network inputs of cars one after another in `frames` (N x 3 x h x w
    uint8 at `spec.frame`), `counts[k]` views of car k: the one function that
    builds inputs, for training and prediction alike. A model that compares
    photos with their car's views needs every count >= MIN_VIEWS."""
    if spec.needs_views and min(counts, default=MIN_VIEWS) < MIN_VIEWS:
        raise NotEnoughViews(f"this model compares each photo with its car's other views: "
                             f"it needs a set of at least {MIN_VIEWS} views")
    height, width = frames.shape[-2:]
    planes = {"rgb": frames}
    share, boxes = None, torch.tensor([[0, 0, width, height]] * len(frames))
    if spec.needs_views:
        car = torch.repeat_interleave(torch.arange(len(counts), device=frames.device),
                                      torch.tensor(counts, device=frames.device), output_size=len(frames))
        background = backgrounds(frames, counts)
        planes["median_diff"] = absdiff(frames, background.median[car])
        planes["mean_diff"] = absdiff(frames, background.mean[car])
        differ = differing(planes["median_diff"], spec.crop_fuzz)
        share = differ.float().mean(dim=(1, 2))
        if spec.crop:
            boxes = crop_boxes(differ, spec.crop_margin)
        # one trip to the host for the boxes and the shares together
        host = torch.cat([boxes.to(share.device).float(), share[:, None]], dim=1).tolist()
        boxes, share = [Box(*map(int, row[:4])) for row in host], [row[4] for row in host]
    else:
        boxes = [Box(*row) for row in boxes.tolist()]
    return Inputs(crop_resize([planes[name] for name in spec.channels], boxes, spec.size), boxes, share)


def car_inputs(photos: Sequence[torch.Tensor], spec: InputSpec) -> Inputs:
    """The inputs for the full-resolution photos of one car (all of them one
    set), or of one photo: what the training cache stores and what
    `Predictor.model_inputs` shows."""
    return model_inputs(frames(photos, spec.frame), [len(photos)] if spec.needs_views else [1] * len(photos),
                        spec)

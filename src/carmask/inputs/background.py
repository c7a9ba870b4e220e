"""A car's studio from its turntable views, on the photos' device.

The studio does not move while the car turns, so the per-pixel median of a
car's views is the empty studio, and a photo's difference from it lights up
the car. For all the cars of a batch at once:

1. `backgrounds`: each car's per-pixel median (of an even count: the mean of
   the two middle values, truncated, as numpy's) and rounded mean;
2. `absdiff`: |photo - background|;
3. `differing`: the pixels that differ by more than a fuzz (RMS over the
   channels); they give the crop box (`crop_boxes`) and tell whether a set
   shares one studio (the share of the frame that differs).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from carmask.inputs.spec import MIN_VIEWS, NotEnoughViews


class Backgrounds(NamedTuple):
    median: torch.Tensor  # uint8 K x 3 x H x W, one per car
    mean: torch.Tensor  # uint8 K x 3 x H x W


@functools.cache
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


def median(views: list[torch.Tensor]) -> torch.Tensor:
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
        raise NotEnoughViews(f"a background needs at least {MIN_VIEWS} views of the same car, got {min(counts)}")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
    medians = frames.new_empty((len(counts), *frames.shape[1:]))
    means = frames.new_empty((len(counts), *frames.shape[1:]))
    for count in sorted(set(counts)):
        cars = [k for k, c in enumerate(counts) if c == count]
        views = torch.stack([frames[starts[k] : starts[k] + count] for k in cars])  # cars x count x 3 x h x w
        medians[cars] = median(list(views.unbind(1)))
        means[cars] = _mean(views)
    return Backgrounds(medians, means)


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
    boxes = torch.stack(
        [
            (left - dx).clamp(min=0),
            (top - dy).clamp(min=0),
            (right + dx).clamp(max=width),
            (bottom + dy).clamp(max=height),
        ],
        dim=1,
    )
    whole = torch.tensor([0, 0, width, height], device=differ.device)
    return torch.where(rows.any(dim=1, keepdim=True), boxes, whole)

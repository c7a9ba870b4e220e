"""From the model's probabilities at its working size to masks at the output size.

On the predictor's device, for a whole batch: enclosed holes are filled at
the network's size; each photo's probabilities (of its crop) are resized
(bilinear) straight into the crop's box of the output, zero outside it; then
thresholded. Probabilities are resized and thresholded after: hard masks are
never resized, which is where the seed lost 1% of dice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from carmask.inputs.resize import resize_map
from carmask.inputs.spec import Box
from carmask.rle import row_flags

THRESHOLD = 0.5


def fill_holes(probs: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """Raise to 1 the probability of background pockets enclosed by the car,
    for N x h x w probabilities at the network's size. On the CPU scipy finds
    the holes; on a GPU a flood fill does, so nothing leaves the device."""
    car = probs > threshold
    if probs.device.type == "cpu":
        holes = (
            torch.from_numpy(np.stack([ndimage.binary_fill_holes(c) for c in car.numpy()])) & ~car if len(car) else car
        )
    else:
        holes = ~car & ~border_background(car)
    return probs.masked_fill(holes, 1.0)


def border_background(car: torch.Tensor, check_every: int = 16) -> torch.Tensor:
    """Background pixels of N x h x w masks that reach the image border through
    background (4-connected, as scipy's hole filling): a flood fill with torch
    ops, grown from the border one pixel per step until it stops growing."""
    background = ~car
    reach = torch.zeros_like(background)
    reach[:, [0, -1], :] = True
    reach[:, :, [0, -1]] = True
    reach &= background
    while True:
        before = reach
        for _ in range(check_every):  # a host sync only now and then
            grown = reach.clone()
            grown[:, 1:] |= reach[:, :-1]
            grown[:, :-1] |= reach[:, 1:]
            grown[:, :, 1:] |= reach[:, :, :-1]
            grown[:, :, :-1] |= reach[:, :, 1:]
            reach = grown & background
        if torch.equal(reach, before):
            return reach


@dataclass
class Placed:
    """One photo's probabilities at its output size, held as the part inside
    `box` (output pixels); zero outside it."""

    probs: torch.Tensor  # box height x box width, float32
    box: Box
    size: tuple[int, int]  # the output's (width, height)

    def full(self) -> torch.Tensor:
        """H x W float32 probabilities in [0, 1] on the device."""
        width, height = self.size
        probs = self.probs.clamp(0, 1)  # a resize's rounding can step just past 1
        if self.box == (0, 0, width, height):
            return probs
        out = probs.new_zeros((height, width))
        out[self.box.top : self.box.bottom, self.box.left : self.box.right] = probs
        return out


def output_box(box: Box, frame: tuple[int, int], size: tuple[int, int]) -> Box:
    """A box in frame pixels in the pixels of an output of `size` (at least one pixel)."""
    sx, sy = size[0] / frame[0], size[1] / frame[1]
    left, top = round(box.left * sx), round(box.top * sy)
    return Box(left, top, max(round(box.right * sx), left + 1), max(round(box.bottom * sy), top + 1))


def place(probs: torch.Tensor, boxes: list[Box], frame: tuple[int, int], sizes: list[tuple[int, int]]) -> list[Placed]:
    """N x h x w probabilities of crops at the network's size -> each photo's
    probabilities at its output size: holes filled, then each crop resized
    (bilinear) straight into its box of the output."""
    probs = fill_holes(probs.float())
    placed = []
    for p, box, size in zip(probs, boxes, sizes):
        box = output_box(box, frame, size)
        placed.append(
            Placed(resize_map(p[None, None], (box.right - box.left, box.bottom - box.top))[0, 0], box, tuple(size))
        )
    return placed


def mask_flags(placed: list[Placed]) -> torch.Tensor:
    """The run-boundary flags of every photo's mask (probability > THRESHOLD)
    inside its box (`rle.row_flags`), on the device, one flat tensor;
    `rle.box_boundaries` reads each photo's runs out of its part."""
    return row_flags([p.probs for p in placed], THRESHOLD)

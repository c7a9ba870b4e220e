"""From the model's probabilities at its working size to a full-size mask.

Probabilities are resized (bilinear) and thresholded after; hard masks are
never resized, which is where the seed lost 1% of dice.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from carmask.views import Box

THRESHOLD = 0.5


def fill_holes(probs: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """Raise to 1 the probability of background pockets enclosed by the car,
    for N x h x w probabilities at the network's size. On the CPU scipy finds
    the holes; on a GPU a flood fill does, so nothing leaves the device."""
    car = probs > threshold
    if probs.device.type == "cpu":
        holes = torch.from_numpy(np.stack([ndimage.binary_fill_holes(c) for c in car.numpy()])) & ~car \
            if len(car) else car
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


def resize_probs(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of N x 1 x H x W probabilities to (width, height)."""
    if probs.shape[-1] == size[0] and probs.shape[-2] == size[1]:
        return probs
    shrinking = size[0] < probs.shape[-1] or size[1] < probs.shape[-2]
    return F.interpolate(probs, size=(size[1], size[0]), mode="bilinear",
                         align_corners=False, antialias=shrinking)


def paste(probs: torch.Tensor, box: Box, frame: tuple[int, int]) -> torch.Tensor:
    """Put 1 x 1 x h x w probabilities for a crop back into a zero frame."""
    width, height = box.right - box.left, box.bottom - box.top
    if (box.left, box.top, width, height) == (0, 0, *frame):
        return resize_probs(probs, frame)
    out = probs.new_zeros((1, 1, frame[1], frame[0]))
    out[..., box.top:box.bottom, box.left:box.right] = resize_probs(probs, (width, height))
    return out


def full_size(probs: torch.Tensor, boxes: list[Box], frame: tuple[int, int],
              output_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """N x h x w probabilities at the network's size -> each photo's H x W
    float32 probabilities at its output size, on the device they came on."""
    probs = fill_holes(probs.float())
    return [resize_probs(paste(p[None, None], box, frame), size)[0, 0]
            for p, box, size in zip(probs, boxes, output_sizes)]


def to_mask(probs: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    return (probs > threshold).astype(np.uint8)

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
    for N x h x w probabilities at the network's size on any device (the hole
    search runs on the host, on the small thresholded masks only)."""
    car = (probs > threshold).cpu().numpy()
    holes = np.stack([ndimage.binary_fill_holes(c) & ~c for c in car]) if len(car) else car
    if not holes.any():
        return probs
    return probs.masked_fill(torch.from_numpy(holes).to(probs.device), 1.0)


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

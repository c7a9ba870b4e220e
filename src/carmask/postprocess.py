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


def fill_holes(probs: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Raise to 1 the probability of background pockets enclosed by the car."""
    car = probs > threshold
    holes = ndimage.binary_fill_holes(car) & ~car
    return np.where(holes, np.float32(1.0), probs).astype(np.float32) if holes.any() else probs


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


def full_size(probs: np.ndarray, box: Box, frame: tuple[int, int],
              output_size: tuple[int, int]) -> np.ndarray:
    """Probabilities at the network's size -> float32 probabilities at `output_size`."""
    tensor = torch.from_numpy(np.ascontiguousarray(fill_holes(probs)))[None, None]
    return resize_probs(paste(tensor, box, frame), output_size)[0, 0].numpy()


def to_mask(probs: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    return (probs > threshold).astype(np.uint8)

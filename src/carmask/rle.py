"""Kaggle Carvana run-length encoding.

Pixels are numbered from 1, row-major (left to right, then top to bottom);
the code is a space-separated list of `start length` pairs for the car pixels.
"""
from __future__ import annotations

import numpy as np
import torch


def run_boundaries(mask: np.ndarray) -> np.ndarray:
    """0-based flat indices where runs of car pixels start and end (exclusive)."""
    flat = np.asarray(mask, dtype=bool).ravel()
    padded = np.concatenate([[False], flat, [False]])
    return np.flatnonzero(padded[1:] != padded[:-1])


def batch_run_boundaries(masks: torch.Tensor) -> list[np.ndarray]:
    """`run_boundaries` of each N x H x W boolean mask, with torch ops on the
    masks' own device (a GPU): only the boundary indices travel to the host."""
    flat = masks.reshape(len(masks), -1)
    edge = flat.new_zeros((len(masks), 1))
    padded = torch.cat([edge, flat, edge], dim=1)
    image, index = torch.nonzero(padded[:, 1:] != padded[:, :-1], as_tuple=True)
    counts = torch.bincount(image, minlength=len(masks)).tolist()
    return list(np.split(index.cpu().numpy(), np.cumsum(counts)[:-1]))


def encode_boundaries(edges: np.ndarray) -> str:
    """A Kaggle RLE string from `run_boundaries` output."""
    starts, ends = edges[0::2], edges[1::2]
    pairs = np.stack([starts + 1, ends - starts], axis=1)
    return " ".join(map(str, pairs.ravel().tolist()))


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (truthy = car) as a Kaggle RLE string ('' if empty)."""
    return encode_boundaries(run_boundaries(mask))


def decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode a Kaggle RLE string to a uint8 0/1 mask of `shape` (height, width)."""
    height, width = shape
    flat = np.zeros(height * width + 1, dtype=np.int8)
    numbers = np.array(rle.split(), dtype=np.int64) if rle and rle.strip() else np.zeros(0, np.int64)
    if numbers.size % 2:
        raise ValueError("RLE must hold an even count of numbers (start length pairs)")
    starts, lengths = numbers[0::2] - 1, numbers[1::2]
    if numbers.size and (starts.min() < 0 or (starts + lengths).max() > height * width or lengths.min() < 1):
        raise ValueError(f"RLE runs fall outside a {width}x{height} mask")
    # Mark each run's start with +1 and its end with -1, then integrate.
    np.add.at(flat, starts, 1)
    np.add.at(flat, starts + lengths, -1)
    return (np.cumsum(flat[:-1]) > 0).astype(np.uint8).reshape(height, width)

"""Kaggle Carvana run-length encoding.

Pixels are numbered from 1, row-major (left to right, then top to bottom);
the code is a space-separated list of `start length` pairs for the car pixels.
"""
from __future__ import annotations

import numpy as np


def run_boundaries(mask: np.ndarray) -> np.ndarray:
    """0-based flat indices where runs of car pixels start and end (exclusive)."""
    flat = np.asarray(mask, dtype=bool).ravel()
    padded = np.concatenate([[False], flat, [False]])
    return np.flatnonzero(padded[1:] != padded[:-1])


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (truthy = car) as a Kaggle RLE string ('' if empty)."""
    edges = run_boundaries(mask)
    starts, ends = edges[0::2], edges[1::2]
    pairs = np.stack([starts + 1, ends - starts], axis=1)
    return " ".join(map(str, pairs.ravel().tolist()))


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

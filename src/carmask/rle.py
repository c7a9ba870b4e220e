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


def mask_rows(count: int, size: tuple[int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed rows for `count` masks of `size` (width, height), and the masks
    as N x H x W views into them: fill the masks, then `boundary_flags(rows)`.
    A row holds one False, the mask's pixels row-major, then False up to a
    length of a multiple of 8, plus one."""
    width, height = size
    length = width * height + 1
    rows = torch.zeros((count, -(-length // 8) * 8 + 1), dtype=torch.bool, device=device)
    return rows, rows[:, 1:length].view(count, height, width)


def boundary_flags(rows: torch.Tensor) -> torch.Tensor:
    """Where runs start and end, on the masks' own device (a GPU): flag i of a
    row is set where flat pixel i differs from pixel i - 1 (outside the mask
    counts as background). A fixed size (a multiple of 8 per mask), so the
    copy back never waits for a count; `flags_to_boundaries` reads the
    indices out on the host. `rows` as `mask_rows` makes them."""
    return rows[:, 1:] != rows[:, :-1]


def flags_to_boundaries(flags: np.ndarray) -> np.ndarray:
    """`run_boundaries` from one row of `boundary_flags`: the set flags'
    indices, found eight at a time (masks change in few places)."""
    flags = np.ascontiguousarray(flags, dtype=bool)
    words = np.flatnonzero(flags.view(np.uint64))
    within = np.flatnonzero(flags.reshape(-1, 8)[words])
    return words[within // 8] * 8 + within % 8


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

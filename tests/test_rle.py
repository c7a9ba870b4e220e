import numpy as np
import pytest

import torch

from carmask.rle import (boundary_flags, decode, encode, encode_boundaries, flags_to_boundaries, mask_rows,
                         run_boundaries)


def test_known_encoding_is_one_indexed_and_row_major():
    mask = np.array([[0, 1, 1],
                     [1, 0, 0]])
    assert encode(mask) == "2 3"       # pixels 2, 3 (row 1) and 4 (row 2) form one run
    assert encode(mask.T) == "2 2 5 1"  # transposed: 0 1 / 1 0 / 1 0


@pytest.mark.parametrize("mask", [np.zeros((1280, 1918)), np.ones((1280, 1918)),
                                  np.eye(7), np.ones((1, 1)), np.zeros((1, 1))])
def test_round_trip_edge_cases(mask):
    assert np.array_equal(decode(encode(mask), mask.shape), mask.astype(np.uint8))


def test_empty_and_full():
    assert encode(np.zeros((4, 5))) == ""
    assert encode(np.ones((4, 5))) == "1 20"
    assert decode("", (4, 5)).sum() == 0


def test_round_trip_random():
    rng = np.random.default_rng(0)
    for _ in range(300):
        height, width = rng.integers(1, 40, size=2)
        mask = rng.random((height, width)) < rng.random()
        assert np.array_equal(decode(encode(mask), mask.shape), mask.astype(np.uint8))


@pytest.mark.parametrize("bad", ["1", "0 3", "5 10", "1 0"])
def test_decode_rejects_invalid_runs(bad):
    with pytest.raises(ValueError):
        decode(bad, (2, 3))


@pytest.mark.parametrize("shape", [(6, 13, 17), (2, 1, 1), (3, 7, 8), (2, 128, 191)])
def test_boundary_flags_read_back_as_run_boundaries(shape):
    """The device's fixed-size flags (the GPU's path, run on the CPU) give the
    host the runs numpy finds, whatever the mask's length modulo 8."""
    rng = np.random.default_rng(sum(shape))
    masks = rng.random(shape) < rng.random((shape[0], 1, 1))
    masks[0] = False
    masks[1] = True
    rows, views = mask_rows(shape[0], (shape[2], shape[1]), "cpu")
    views[...] = torch.from_numpy(masks)
    flags = boundary_flags(rows)
    assert flags.shape[1] % 8 == 0 and flags.shape[1] > masks[0].size
    for row, mask in zip(flags.numpy(), masks):
        edges = flags_to_boundaries(row)
        assert np.array_equal(edges, run_boundaries(mask))
        assert encode_boundaries(edges) == encode(mask)

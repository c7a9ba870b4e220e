import numpy as np
import pytest

import torch

from carmask.rle import batch_run_boundaries, decode, encode, encode_boundaries, run_boundaries


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


def test_batch_boundaries_on_tensors_match_numpy():
    rng = np.random.default_rng(1)
    masks = rng.random((6, 13, 17)) < rng.random((6, 1, 1))
    masks[0], masks[1], masks[2, 0, 0], masks[3, -1, -1] = False, True, True, True
    tensor = torch.from_numpy(masks)
    for edges, mask in zip(batch_run_boundaries(tensor), masks):  # the GPU's path, run on the CPU
        assert np.array_equal(edges, run_boundaries(mask))
        assert encode_boundaries(edges) == encode(mask)

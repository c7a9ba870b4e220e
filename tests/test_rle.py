import numpy as np
import pytest
import torch

from carmask.rle import box_boundaries, decode, encode, encode_boundaries, row_flags, run_boundaries


def test_known_encoding_is_one_indexed_and_row_major():
    mask = np.array([[0, 1, 1], [1, 0, 0]])
    assert encode(mask) == "2 3"  # pixels 2, 3 (row 1) and 4 (row 2) form one run
    assert encode(mask.T) == "2 2 5 1"  # transposed: 0 1 / 1 0 / 1 0


@pytest.mark.parametrize(
    "mask", [np.zeros((1280, 1918)), np.ones((1280, 1918)), np.eye(7), np.ones((1, 1)), np.zeros((1, 1))]
)
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


@pytest.mark.parametrize(
    "size, box",
    [
        ((17, 13), (3, 2, 11, 9)),  # inside
        ((17, 13), (0, 0, 17, 13)),  # the whole mask: runs go on from row to row
        ((17, 13), (0, 4, 17, 8)),  # whole rows
        ((17, 13), (0, 0, 9, 13)),  # touching the left edge
        ((16, 8), (8, 0, 16, 8)),  # touching the right edge
        ((1, 1), (0, 0, 1, 1)),
    ],
)
def test_row_flags_give_the_run_boundaries_of_the_whole_mask(size, box):
    """Flags computed inside each photo's box on the device (the GPU's path,
    run on the CPU) give the host the runs of the whole mask."""
    width, height = size
    rng = np.random.default_rng(width * box[0] + box[1])
    probs, masks = [], []
    for density in (0.0, 1.0, 0.3, 0.7):
        inside = rng.random((box[3] - box[1], box[2] - box[0])) < density
        probs.append(torch.from_numpy(inside.astype(np.float32)))
        mask = np.zeros((height, width), bool)
        mask[box[1] : box[3], box[0] : box[2]] = inside
        masks.append(mask)
    flags, start = row_flags(probs, 0.5).numpy(), 0
    for p, mask in zip(probs, masks):
        end = start + p.shape[0] * (p.shape[1] + 1)
        edges = box_boundaries(flags[start:end], box, width)
        assert np.array_equal(edges, run_boundaries(mask))
        assert encode_boundaries(edges) == encode(mask)
        start = end
    assert start == len(flags)

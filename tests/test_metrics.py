import numpy as np
import pytest

from carmask.metrics import dice, mean_dice


def test_dice_values():
    a = np.array([[1, 1, 0, 0]])
    b = np.array([[1, 0, 0, 0]])
    assert dice(a, a) == 1.0
    assert dice(a, b) == pytest.approx(2 / 3)
    assert dice(a, 1 - a) == 0.0


def test_two_empty_masks_score_one():
    empty = np.zeros((3, 3))
    assert dice(empty, empty) == 1.0
    assert dice(empty, np.eye(3)) == 0.0


def test_mean_is_per_image():
    big, small = np.ones((10, 10)), np.zeros((10, 10))
    small[0, 0] = 1
    pairs = [(big, big), (small, np.zeros_like(small))]
    assert mean_dice(pairs) == pytest.approx(0.5)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        dice(np.ones((2, 2)), np.ones((2, 3)))


def test_batch_dice_agrees_with_dice():
    """Training's validation (`batch_dice`, tensors) and evaluation (`dice`, numpy)
    compute the same number for every image, empty masks included."""
    import torch

    from carmask.metrics import batch_dice

    rng = np.random.default_rng(0)
    pred = rng.random((6, 1, 17, 23)) > rng.random((6, 1, 1, 1))
    truth = rng.random((6, 1, 17, 23)) > 0.4
    pred[0], truth[0] = False, False  # two empty masks score 1
    pred[1], truth[2] = False, False  # one empty mask scores 0
    got = batch_dice(torch.from_numpy(pred), torch.from_numpy(truth)).numpy()
    want = [dice(p, t) for p, t in zip(pred, truth)]
    assert got == pytest.approx(want, abs=1e-12)
    assert got[0] == 1.0 and got[1] == 0.0 and got[2] == 0.0

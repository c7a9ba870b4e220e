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

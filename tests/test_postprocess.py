import numpy as np
import torch
from scipy import ndimage

from carmask.postprocess import border_background, fill_holes


def test_gpu_flood_fill_finds_the_holes_scipy_finds():
    rng = np.random.default_rng(2)
    car = rng.random((8, 40, 56)) < rng.uniform(0.3, 0.7, (8, 1, 1))
    car[0] = False
    car[1] = True
    car[2] = False
    car[2, 5:30, 5:40] = True
    car[2, 10:20, 10:20] = False  # one enclosed pocket
    car[2, 25, 5] = False          # and a notch open to the outside through the edge
    holes = ~car & ~border_background(torch.from_numpy(car)).numpy()  # the GPU's path, on the CPU
    expected = np.stack([ndimage.binary_fill_holes(c) & ~c for c in car])
    assert np.array_equal(holes, expected) and holes[2].sum() == 100


def test_fill_holes_raises_enclosed_pockets_only():
    probs = torch.zeros(1, 20, 20)
    probs[0, 2:18, 2:18] = 0.9
    probs[0, 8:12, 8:12] = 0.1
    filled = fill_holes(probs)
    assert filled[0, 10, 10] == 1.0 and filled[0, 0, 0] == 0 and filled[0, 5, 5] == np.float32(0.9)

import numpy as np
import torch
from scipy import ndimage

from carmask.inputs.resize import resize_map
from carmask.inputs.spec import Box
from carmask.postprocess import border_background, fill_holes, mask_flags, output_box, place
from carmask.rle import box_boundaries, run_boundaries


def test_gpu_flood_fill_finds_the_holes_scipy_finds():
    rng = np.random.default_rng(2)
    car = rng.random((8, 40, 56)) < rng.uniform(0.3, 0.7, (8, 1, 1))
    car[0] = False
    car[1] = True
    car[2] = False
    car[2, 5:30, 5:40] = True
    car[2, 10:20, 10:20] = False  # one enclosed pocket
    car[2, 25, 5] = False  # and a notch open to the outside through the edge
    holes = ~car & ~border_background(torch.from_numpy(car)).numpy()  # the GPU's path, on the CPU
    expected = np.stack([ndimage.binary_fill_holes(c) & ~c for c in car])
    assert np.array_equal(holes, expected) and holes[2].sum() == 100


def test_fill_holes_raises_enclosed_pockets_only():
    probs = torch.zeros(1, 20, 20)
    probs[0, 2:18, 2:18] = 0.9
    probs[0, 8:12, 8:12] = 0.1
    filled = fill_holes(probs)
    assert filled[0, 10, 10] == 1.0 and filled[0, 0, 0] == 0 and filled[0, 5, 5] == np.float32(0.9)


def test_crops_are_resized_into_their_boxes_of_the_output():
    """A crop's probabilities land in its box of the output (scaled from the
    frame), zero around it; a crop of the whole frame is a plain resize."""
    rng = np.random.default_rng(3)
    probs = torch.from_numpy(rng.random((2, 16, 16)).astype(np.float32))
    probs[:, 0, 0] = 0.9  # no enclosed holes to fill: compare resizes only
    whole, part = Box(0, 0, 64, 32), Box(16, 8, 48, 24)
    placed = place(probs, [whole, part], frame=(64, 32), sizes=[(128, 64), (128, 64)])
    assert torch.allclose(placed[0].full(), resize_map(fill_holes(probs[:1])[:, None], (128, 64))[0, 0])
    assert output_box(part, (64, 32), (128, 64)) == placed[1].box == Box(32, 16, 96, 48)
    full = placed[1].full()
    assert full.shape == (64, 128) and full[:16].sum() == 0 and full[:, 96:].sum() == 0
    assert torch.allclose(full[16:48, 32:96], resize_map(fill_holes(probs[1:])[:, None], (64, 32))[0, 0])
    flags, start = mask_flags(placed).numpy(), 0  # the encoded path: the same masks
    for p in placed:
        end = start + p.probs.shape[0] * (p.probs.shape[1] + 1)
        assert np.array_equal(box_boundaries(flags[start:end], p.box, 128), run_boundaries(p.full().numpy() > 0.5))
        start = end

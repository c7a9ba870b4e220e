"""Edge refinement on synthetic turntable sets with soft edges of known alpha."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from carmask.cutout import alpha_from_probs
from carmask.refine import refine
from carmask.synth import random_car, render_soft_view, studio_background

SIZE = (288, 192)
COARSE = 4   # the network sees a car of some 128 pixels: a quarter of these photos


@pytest.fixture(scope="module")
def soft_set():
    """8 views with soft edges: photos N x 3 x H x W uint8, true alpha N x H x W, and
    coarse probabilities as a 128-pixel network gives them: the alpha at 1/4 scale,
    its edge moved a little by a smooth random field, scaled back up."""
    background = studio_background(*SIZE, seed=2)
    rng = np.random.default_rng(2)
    car = random_car(rng)
    views = [render_soft_view(background, car, v, 8, rng, supersample=3) for v in range(1, 9)]
    photos = torch.from_numpy(np.stack([p for p, _ in views])).permute(0, 3, 1, 2).contiguous()
    alpha = torch.from_numpy(np.stack([a for _, a in views]))
    generator = torch.Generator().manual_seed(0)
    low = F.interpolate(alpha[:, None], size=(SIZE[1] // COARSE, SIZE[0] // COARSE), mode="bilinear", antialias=True)
    shift = F.interpolate(torch.rand((8, 1, 4, 6), generator=generator) - 0.5, size=low.shape[-2:],
                          mode="bilinear")
    probs = F.interpolate(torch.sigmoid((low - 0.5 + 0.5 * shift) * 16), size=(SIZE[1], SIZE[0]),
                          mode="bilinear")[:, 0]
    return photos, alpha, probs, torch.from_numpy(background).permute(2, 0, 1).float()


def _sad(estimate, truth):
    return (estimate - truth).abs().sum().item()


def test_soft_views_obey_the_compositing_equation():
    background = studio_background(96, 64, seed=1)
    photo, alpha = render_soft_view(background, random_car(np.random.default_rng(1)), 3, blur=0)
    assert photo.shape == (64, 96, 3) and alpha.shape == (64, 96) and alpha.dtype == np.float32
    edge = (alpha > 0.05) & (alpha < 0.95)
    assert edge.sum() > 50 and alpha.min() == 0 and alpha.max() == 1  # soft edges, solid inside


@pytest.mark.parametrize("with_views", [False, True])
def test_refinement_lowers_the_alpha_error(soft_set, with_views):
    photos, truth, probs, _ = soft_set
    plain = torch.from_numpy(alpha_from_probs(probs.numpy()) / 255).float()
    views = (photos, probs) if with_views else (None, None)
    alpha, foreground = refine(photos, probs, *views)
    assert alpha.shape == probs.shape and alpha.dtype == torch.float32
    assert foreground.shape == photos.shape and foreground.dtype == torch.uint8
    assert 0 <= alpha.min() and alpha.max() <= 1
    assert _sad(alpha, truth) < 0.75 * _sad(plain, truth)
    # The mask from the refined alpha is at least as good as the plain one.
    dice = lambda a: 2 * ((a > 0.5) & (truth > 0.5)).sum() / ((a > 0.5).sum() + (truth > 0.5).sum())  # noqa: E731
    assert dice(alpha) >= dice(plain)


def test_refinement_touches_only_the_band(soft_set):
    photos, _, probs, _ = soft_set
    alpha, foreground = refine(photos, probs)
    sure = (probs < 0.001) | (probs > 0.999)
    far = F.max_pool2d((~sure).float()[:, None], 61, 1, 30)[:, 0] == 0  # 30 px from any unsure pixel
    assert far.any()
    assert torch.equal(alpha[far], (probs[far] > 0.5).float())
    assert torch.equal(foreground.permute(0, 2, 3, 1)[far], photos.permute(0, 2, 3, 1)[far])


def test_studio_colour_leaves_the_edge_pixels(soft_set):
    """Half-covered edge pixels: the foreground is nearer the car's own colour
    (from I = a F + (1 - a) B with the true alpha and studio) than the photo is."""
    photos, truth, probs, studio = soft_set
    _, foreground = refine(photos, probs, photos, probs)
    edge = (truth > 0.4) & (truth < 0.9)
    a = truth[:, None]
    car = (photos.float() - (1 - a) * studio) / a.clamp(min=0.4)
    gap = lambda image: (image.float() - car).norm(dim=1)[edge].mean()  # noqa: E731
    assert gap(foreground) < 0.9 * gap(photos)


def test_empty_band_and_float_photos():
    photos = torch.full((2, 3, 40, 60), 200.0)
    probs = torch.zeros(2, 40, 60)
    alpha, foreground = refine(photos, probs)
    assert torch.equal(alpha, probs) and foreground.dtype == torch.uint8 and int(foreground.max()) == 200

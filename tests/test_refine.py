"""Edge refinement on synthetic turntable sets with soft edges of known alpha, and in the predictor's batch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from carmask import refine
from carmask.predict import Batch, Predictor
from carmask.refine import edges, plain, soft
from carmask.synth import random_car, render_soft_view, studio_background

SIZE = (288, 192)
COARSE = 4  # the network sees a car of some 128 pixels: a quarter of these photos


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
    shift = F.interpolate(torch.rand((8, 1, 4, 6), generator=generator) - 0.5, size=low.shape[-2:], mode="bilinear")
    probs = F.interpolate(torch.sigmoid((low - 0.5 + 0.5 * shift) * 16), size=(SIZE[1], SIZE[0]), mode="bilinear")[:, 0]
    return photos, alpha, probs, torch.from_numpy(background).permute(2, 0, 1).float()


def _refined(photos, probs, with_views=True, hook=edges):
    """alpha (N x H x W float) and foreground (N x H x W x 3 uint8) from a hook, as the predictor calls it."""
    n = len(photos)
    views = [list(range(n)) if with_views else [i] for i in range(n)]
    out = hook(Batch(list(photos), views, list(probs)))
    return torch.stack([e.alpha.float() / 255 for e in out]), torch.stack([e.foreground for e in out])


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
    before, _ = _refined(photos, probs, with_views, hook=plain)
    alpha, foreground = _refined(photos, probs, with_views)
    assert alpha.shape == probs.shape and foreground.shape == (*probs.shape, 3)
    assert torch.allclose(before, soft(probs), atol=1 / 255)  # plain: the network's own soft edge
    assert _sad(alpha, truth) < 0.9 * _sad(before, truth)
    # The mask from the refined alpha is at least as good as the plain one.
    dice = lambda a: 2 * ((a > 0.5) & (truth > 0.5)).sum() / ((a > 0.5).sum() + (truth > 0.5).sum())  # noqa: E731
    assert dice(alpha) >= dice(before)


@pytest.mark.slow
def test_refinement_touches_only_the_band(soft_set):
    photos, _, probs, _ = soft_set
    alpha, foreground = _refined(photos, probs)
    far = (probs < 0.25 - refine.REACH) | (probs > 0.75 + refine.REACH)
    assert far.any()
    assert torch.equal(alpha[far], (probs[far] > 0.5).float())
    assert torch.equal(foreground[far], photos.permute(0, 2, 3, 1)[far])


@pytest.mark.slow
def test_the_edge_stays_within_the_networks_fade(soft_set):
    photos, _, probs, _ = soft_set
    alpha, _ = _refined(photos, probs)
    assert (alpha >= soft(probs - refine.REACH) - 1 / 255).all() and (
        alpha <= soft(probs + refine.REACH) + 1 / 255
    ).all()


def test_no_growing_into_the_shadow_below_the_car():
    """A dark car over a light floor, its shadow below it as dark as the car:
    the network's fade reaches into the shadow; alpha there stays at most the
    network's own, while the car's upper edge follows the photo."""
    height, width = 64, 64
    photo = torch.full((3, height, width), 200, dtype=torch.uint8)
    photo[:, :32] = 30  # the car: the upper half
    photo[:, 32:40] = 35  # its shadow on the floor, as dark
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    probs = torch.sigmoid((31.5 - rows) / 2.5)  # the network: edge at the right place, a wide fade
    alpha, _ = _refined(photo[None], probs[None], with_views=False)
    below = rows > 32
    assert (alpha[0][below] <= soft(probs)[below] + 1 / 255).all()
    flipped, _ = _refined(photo.flip(1)[None], probs.flip(0)[None], with_views=False)  # the same edge, car below
    assert flipped[0][~below.flip(0)].sum() > alpha[0][below].sum()  # an upper edge may grow


def test_studio_colour_leaves_the_edge_pixels(soft_set):
    """Half-covered edge pixels: the foreground is nearer the car's own colour
    (from I = a F + (1 - a) B with the true alpha and studio) than the photo is."""
    photos, truth, probs, studio = soft_set
    _, foreground = _refined(photos, probs)
    edge = (truth > 0.4) & (truth < 0.9)
    a = truth[:, None]
    car = (photos.float() - (1 - a) * studio) / a.clamp(min=0.4)
    gap = lambda image: (image.float() - car).norm(dim=1)[edge].mean()  # noqa: E731
    assert gap(foreground.permute(0, 3, 1, 2)) < 0.9 * gap(photos)


def test_empty_band_and_other_output_sizes():
    photos = torch.full((2, 3, 40, 60), 200, dtype=torch.uint8)
    alpha, foreground = _refined(photos, torch.zeros(2, 40, 60))
    assert not alpha.any() and int(foreground.max()) == 200
    alpha, _ = _refined(photos, torch.ones(2, 80, 120))  # probabilities at another size: alpha at the photo's
    assert alpha.shape == (2, 40, 60) and alpha.min() == 1


def test_cutouts_are_refined_in_the_batch_without_a_second_decode(rgb_model, synth_data, monkeypatch):
    import carmask.inputs.decode
    import carmask.predictor.photos

    photos = sorted((synth_data / "test").glob("*.jpg"))[:4]
    decoded = []
    real = carmask.inputs.decode.read_turned

    def counting(source, **kwargs):
        decoded.append(source)
        return real(source, **kwargs)

    monkeypatch.setattr(carmask.inputs.decode, "read_turned", counting)
    monkeypatch.setattr(carmask.predictor.photos, "decode", lambda *a, **k: pytest.fail("decoded twice"))
    predictor = Predictor(model=rgb_model, device="cpu")
    items = [(p.name, p) for p in photos]
    refined = predictor.predict_views(items, cutout="refined")
    assert len(decoded) == len(photos)
    plain_ones = predictor.predict_views(items, cutout="plain")
    probs = predictor.predict_views(items)
    for r, p, q in zip(refined, plain_ones, probs):
        assert r.alpha.shape == (128, 192) and r.alpha.dtype == np.uint8 and r.probs is None
        assert r.foreground.shape == (128, 192, 3) and r.foreground.dtype == np.uint8
        assert np.abs(p.alpha.astype(int) - np.round(soft(torch.from_numpy(q.probs)).numpy() * 255)).max() <= 1
        assert np.array_equal(p.foreground, np.asarray(carmask.inputs.decode.read_photo(synth_data / "test" / r.path)))
    with pytest.raises(ValueError, match="cutout"):
        predictor.predict_views(items, cutout="sharp")


def test_a_refine_hook_makes_the_masks_at_any_output_size(rgb_model, synth_data):
    """Predictor(refine=edges): the refined alpha, at the photo's size, becomes the
    probabilities at the output size; the network's sure pixels keep their side."""
    photos = sorted((synth_data / "test").glob("*.jpg"))[:3]
    items = [(p.name, p) for p in photos]
    size = (384, 256)
    plain_probs = Predictor(model=rgb_model, device="cpu").predict_views(items, output_size=size)
    refined = Predictor(model=rgb_model, device="cpu", refine=edges).predict_views(items, output_size=size)
    for p, r in zip(plain_probs, refined):
        assert r.probs.shape == (256, 384) and r.alpha is None
        sure = (p.probs < 0.05) | (p.probs > 0.95)
        assert np.array_equal(r.probs[sure] > 0.5, p.probs[sure] > 0.5)
        assert not np.array_equal(r.probs, p.probs)

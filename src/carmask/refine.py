"""Edges at the photo's own resolution: alpha and the car's own colour in a narrow band.

The network sees a 128x128 crop, so its probabilities, scaled up to a
1918x1280 photo, fade over several pixels where the edge is. `edges`
re-decides that fade from the photo, pixel by pixel, with the compositing
equation I = a F + (1 - a) B:

* B, the empty studio behind the pixel: for a photo of a turntable set, the
  median of the views that show studio there (their own probabilities say
  which), as background matting does (Sengupta et al. 2020, Lin et al. 2021);
  elsewhere, and for a single photo, the studio next to the car, carried
  inwards (a push-pull fill of the cells the network is sure are studio).
* F, the car's own colour at its edge: the nearest cells inside the
  network's edge that do not look like the studio, carried outwards.
* a = (I - B).(F - B) / |F - B|^2, trusted where the car's and the studio's
  colours are far apart (CONTRAST), where the car's colours around F agree
  (SPREAD: not a black tyre beside chrome) and where I lies near the line
  from B to F (OFF_LINE: not a reflection or a third colour). Where it is
  not trusted, the network's own soft edge stays (`soft`).
* The edge moves only within the network's fade: alpha stays within
  soft(p - REACH)..soft(p + REACH) (a few pixels on a 1918x1280 photo, under
  one at 512x512), and at the car's lower edges, where it meets its shadow on
  the floor (which the Carvana masks leave out, and which differs from the
  empty studio too), the equation may only take away.
* The car's colour in the band's pixels, the studio's colour taken out:
  F + a (I - a F - (1 - a) B) (Forte & Pitie 2021), as far as the equation is
  trusted (elsewhere the photo's own colour).

A guided filter (He et al.) of the probabilities by the photo was the first
version: it lowered dice (0.99167 to 0.99056 on the held-out cars at 512),
as did the equation with F taken from deep inside the car; see docs/RESULTS.md.

B, F and where the edges are lower edges are smooth maps on a grid about
`WORK` cells across (the studio of a set once for all its views); only the
band's pixels, about 2% of a photo, are computed at full resolution. Pure
torch on the photos' device: the predictor calls `edges` in its device batch
for cut-outs (see `predict.Batch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from carmask.inputs.background import median
from carmask.inputs.resize import resize_image, resize_map
from carmask.inputs.spec import MIN_VIEWS

WORK = 240  # the smooth maps are computed on a grid about this many cells across
SURE = 0.02  # a cell is sure studio where the probability is below this
CAR_ABOVE = 0.5  # ... and car (for F) above this, if its colour is not the studio's
STUDIO_LIKE = 20  # grey levels: a cell within this of the studio in every channel looks like it
STUDIO_BELOW = 0.1  # a view shows studio at a cell where its probability is below this
REACH = 0.15  # alpha stays within soft(p - REACH)..soft(p + REACH)
CONTRAST = (20.0, 50.0)  # |F - B| in grey levels: the equation trusted from 0 (below) to 1 (above)
SPREAD = 3.0  # trust falls to 1/e where the car colours around F spread |F - B| / SPREAD
OFF_LINE = 0.3  # ... and where I lies this far (times |F - B|) from the line from B to F


@dataclass
class Edges:
    """One photo's cut-out pieces, on the photo's device: `alpha` H x W uint8
    (0..255) and `foreground` H x W x 3 uint8 (the photo, with the studio's
    colour taken out of the edge's pixels)."""

    alpha: torch.Tensor
    foreground: torch.Tensor


def soft(probs: torch.Tensor) -> torch.Tensor:
    """The network's own soft edge: probabilities 0.25..0.75 to alpha 0..1 (a smoothstep)."""
    t = ((probs - 0.25) / 0.5).clamp(0, 1)
    return t * t * (3 - 2 * t)


def plain(batch) -> list[Edges]:
    """Cut-out pieces without refinement: the photo, and alpha = soft(probabilities)."""
    out = []
    for photo, probs in zip(batch.photos, batch.probs):
        alpha, band, p = _alpha_outside(_at_photo_size(probs, photo), 0.25, 0.75)
        alpha.view(-1)[band] = _to_uint8(soft(p))
        out.append(Edges(alpha, _hwc(photo).contiguous()))
    return out


@torch.no_grad()
def edges(batch) -> list[Edges]:
    """The refined cut-out pieces of every photo of a predictor's `Batch`
    (`photos`, `probs`, `views`), at each photo's own size."""
    grids = [_Grid(photo, p) for photo, p in zip(batch.photos, batch.probs)]
    studios: dict[tuple[int, ...], torch.Tensor | None] = {}
    out = []
    for i, grid in enumerate(grids):
        views = tuple(j for j in batch.views[i] if grids[j].shape == grid.shape)
        if views not in studios:
            studios[views] = set_studio([grids[j] for j in views]) if len(views) >= MIN_VIEWS else None
        out.append(refine_photo(grid, studios[views]))
    return out


def refine_photo(grid: _Grid, studio: torch.Tensor | None = None) -> Edges:
    """One photo's edges from its grid and, for a set, the set's studio on that grid."""
    alpha, band, pk = _alpha_outside(grid.probs, 0.25 - REACH, 0.75 + REACH)  # the K pixels that may change
    foreground = _hwc(grid.photo).clone(memory_format=torch.contiguous_format)
    if band.numel() == 0:
        return Edges(alpha, foreground)
    value = grid.sample(grid.maps(studio), band)  # K x 8
    b, f, spread, lower = value[:, 0:3], value[:, 3:6], value[:, 6], value[:, 7]
    pixel = foreground.view(-1, 3)[band].float()  # K x 3
    equation, trust = _equation(pixel, b, f, spread)
    a = trust * equation + (1 - trust) * soft(pk)
    a = torch.minimum(torch.maximum(a, soft(pk - REACH)), soft(pk + REACH))
    a = a - (a - soft(pk)).clamp_(min=0) * soft(lower * 1.25 + 0.5)  # lower edges: no growing into the shadow
    alpha.view(-1)[band] = _to_uint8(a)
    # The car's colour, as far as the equation is trusted: where it is not, alpha
    # may be the network's mistake, and the photo's own colour is the safer guess.
    a, trust = a[:, None], trust[:, None]
    colour = pixel + trust * (f + a * (pixel - a * f - (1 - a) * b) - pixel)
    foreground.view(-1, 3)[band] = colour.round_().clamp_(0, 255).to(torch.uint8)
    return Edges(alpha, foreground)


def _equation(
    pixel: torch.Tensor, studio: torch.Tensor, car: torch.Tensor, spread: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha of K pixels from I = a F + (1 - a) B, and how far it is trusted (0..1)."""
    d, i = car - studio, pixel - studio
    length = _norm(d).clamp_(min=1e-3)
    a = (i * d).sum(1) / (length * length)
    off = _norm(i - a[:, None] * d) / (OFF_LINE * length)  # from the line through B and F
    a = a.clamp_(0, 1)
    low, high = CONTRAST
    trust = ((length - low) / (high - low)).clamp_(0, 1) * torch.exp(-off * off - (SPREAD * spread / length) ** 2)
    return a, trust


# -- the grid ----------------------------------------------------------------------------------------


class _Grid:
    """A photo and its probabilities at its size, and both on a grid of
    `scale` x `scale` pixel cells."""

    def __init__(self, photo: torch.Tensor, probs: torch.Tensor):
        self.photo, self.probs = photo, _at_photo_size(probs, photo)
        self.shape = height, width = tuple(self.probs.shape)
        self.scale = scale = max(1, round(max(height, width) / WORK))
        size = (-(-width // scale), -(-height // scale))
        self.small = resize_image(photo[None], size)  # 1 x 3 x h x w
        self.small_probs = F.avg_pool2d(self.probs[None, None].float(), scale, ceil_mode=True)  # 1 x 1 x h x w

    def maps(self, studio: torch.Tensor | None) -> torch.Tensor:
        """1 x 8 x h x w: the studio (3), the car's colour near its edge (3),
        the spread of those colours (1), and where the edge is a lower one (1: > 0)."""
        p, colour = self.small_probs, self.small.float()
        near = _fill(colour, p < SURE)
        studio = near if studio is None else torch.where(studio.isnan(), near, studio)
        car = (p > CAR_ABOVE) & ((colour - studio).abs().amax(1, keepdim=True) > STUDIO_LIKE)
        car = _fill(torch.cat([colour, colour.square().sum(1, keepdim=True)], 1), car)
        spread = (car[:, 3:] - car[:, :3].square().sum(1, keepdim=True)).clamp_(min=0).sqrt_()
        return torch.cat([studio, car[:, :3], spread, _lower_edge(p)], 1)

    def sample(self, maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Bilinear values of 1 x C x h x w maps on the grid at the centres of
        full-resolution pixels (flat indices): K x C."""
        width, (h, w) = self.shape[1], maps.shape[-2:]
        at = torch.stack([index % width, index // width], 1).float().add_(0.5).div_(self.scale)  # x, y in cells
        at = at.div_(torch.tensor([w, h], dtype=at.dtype, device=at.device)).mul_(2).sub_(1)
        return F.grid_sample(maps, at[None, None], mode="bilinear", padding_mode="border", align_corners=False)[
            0, :, 0
        ].T


def set_studio(grids: Sequence[_Grid]) -> torch.Tensor:
    """1 x 3 x h x w: the empty studio on the views' grid, the median of the
    views whose probabilities say studio at each cell; NaN where fewer than
    MIN_VIEWS do. The views that show the car at a cell are set alternately to
    0 and 255, so that the median of all is that of the others (within one
    rank): a uint8 sorting network rather than a sort."""
    small = torch.cat([g.small for g in grids])  # V x 3 x h x w uint8
    hidden = torch.cat([g.small_probs for g in grids]) >= STUDIO_BELOW  # V x 1 x h x w
    filler = (hidden.cumsum(0) % 2 == 0).to(torch.uint8).mul_(255)
    studio = median(list(torch.where(hidden, filler, small).unbind(0)))[None].float()
    return studio.masked_fill_((~hidden).sum(0, keepdim=True) < MIN_VIEWS, float("nan"))


def _fill(values: torch.Tensor, weight: torch.Tensor, levels: int = 12) -> torch.Tensor:
    """Each cell's nearest weighted values (1 x C x h x w values, 1 x 1 x h x w
    boolean weight): a push-pull fill, the weighted mean pulled down a
    pyramid, then pushed back up where a level has too little weight of its own."""
    stacked, pyramid = torch.cat([values * weight, weight.float()], 1), []
    while len(pyramid) < levels and min(stacked.shape[-2:]) > 1:
        pyramid.append(stacked)
        stacked = F.avg_pool2d(stacked, 2, ceil_mode=True)
    filled = stacked[:, :-1] / stacked[:, -1:].clamp(min=1e-6)
    for level in reversed(pyramid):
        up = F.interpolate(filled, size=level.shape[-2:], mode="bilinear", align_corners=False)
        share = level[:, -1:].mul(4).clamp_(max=1)
        filled = level[:, :-1] / level[:, -1:].clamp(min=1e-6) * share + up * (1 - share)
    return filled


def _lower_edge(probs: torch.Tensor) -> torch.Tensor:
    """1 x 1 x h x w, > 0 where the (smoothed) probabilities fall going down
    more steeply than sideways: the car's lower edges."""
    p = F.avg_pool2d(probs, 5, 1, 2, count_include_pad=False)
    height, width = p.shape[-2:]  # a photo 1 or 2 pixels high (or wide) has no slope that way
    fall = F.pad(p[..., :-2, :] - p[..., 2:, :], (0, 0, 1, 1), mode="replicate") if height > 2 else p * 0
    side = F.pad(p[..., :, 2:] - p[..., :, :-2], (1, 1, 0, 0), mode="replicate").abs_() if width > 2 else p * 0
    return (fall - side) / (fall.abs() + side + 1e-6)


# -- small helpers -----------------------------------------------------------------------------------


def _alpha_outside(probs: torch.Tensor, low: float, high: float):
    """uint8 alpha, 0 or 255 by the probabilities' side of 0.5, and the band
    of pixels between `low` and `high` for the caller to fill: their flat
    indices and probabilities."""
    flat = probs.reshape(-1)
    if probs.device.type == "cpu":  # numpy's compares: 3-4 times as fast as torch's on one thread
        values = flat.numpy()
        band = torch.from_numpy(np.flatnonzero((values > low) & (values < high)))
        alpha = torch.from_numpy((probs.numpy() > 0.5).view(np.uint8) * np.uint8(255))
    else:
        band = ((flat > low) & (flat < high)).nonzero()[:, 0]
        alpha = (probs > 0.5).view(torch.uint8).mul_(255)
    return alpha, band, flat[band]


def _hwc(photo: torch.Tensor) -> torch.Tensor:
    """A 3 x H x W photo as H x W x 3 (a view)."""
    return photo.permute(1, 2, 0)


def _norm(vectors: torch.Tensor) -> torch.Tensor:
    """Lengths of K x 3 vectors (cheaper than linalg's norm on such short rows)."""
    return vectors.square().sum(1).sqrt_()


def _to_uint8(alpha: torch.Tensor) -> torch.Tensor:
    return alpha.mul(255).round_().to(torch.uint8)


def _at_photo_size(probs: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
    """Probabilities at the photo's size (they come at the output size, which an evaluation may change)."""
    if tuple(probs.shape) == tuple(photo.shape[-2:]):
        return probs
    return resize_map(probs[None, None].float(), (photo.shape[-1], photo.shape[-2]))[0, 0]

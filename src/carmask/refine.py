"""Edges at the photo's own resolution: alpha and the car's own colour in a band.

The network sees a 128x128 crop, so its probabilities, scaled up to the photo,
put a blurred ramp of several pixels where the edge is, and miss it by a few
where the network was unsure. `refine` re-decides a narrow band around that
edge from the full-resolution photo:

* alpha follows the photo's own edges: a colour guided filter (He et al. 2010,
  2013; fast form 2015) fits, in each window, the probability as a linear
  function of colour on a coarse grid, and applies that model to each band
  pixel's own colour at full resolution;
* the studio's colour is taken out of the edge pixels with the compositing
  equation I = a F + (1 - a) B (the foreground estimate of Forte & Pitie
  2021: a blurred car colour corrected by the equation). B is the empty
  studio behind the pixel: with the car's other views (a turntable set) the
  median of the views whose own probabilities say studio there, as in
  background matting (Sengupta et al. 2020, Lin et al. 2021); for a single
  photo, its own studio pixels nearby.

Everything smooth (studio, car colour, guided-filter coefficients) is
computed on a grid about 240 cells wide; only the band's pixels, a few
percent of the photo, are touched at full resolution. Pure torch, batched,
on whatever device the tensors are on.
"""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F

WORK_WIDTH = 240     # the smooth quantities are computed on a grid about this wide
BAND = 0.01          # half-width of the band around the edge, as a fraction of the photo's longer side
SURE = 0.02          # probabilities below SURE / above 1 - SURE are not re-decided (outside the band)
STUDIO_BELOW = 0.1   # a view shows studio at a pixel where its probability is below this
MIN_STUDIO_VIEWS = 3  # the studio behind a pixel is known where at least this many views show it
GUIDE_EPS = 1e-3     # guided-filter regulariser (guide in 0..1): smaller follows the photo's edges more


@torch.no_grad()
def refine(photos: torch.Tensor, probs: torch.Tensor, views: torch.Tensor | None = None,
           view_probs: torch.Tensor | None = None, band: float = BAND) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha and foreground colour at the photos' resolution.

    photos: N x 3 x H x W, uint8 (or float 0..255). probs: N x H x W car
    probabilities at the same size (the network's, scaled up). views and
    view_probs (optional, V x 3 x H x W and V x H x W): the car's views at the
    same size and their probabilities, shared by the N photos (a photo may be
    one of them); they give the studio behind each edge pixel.

    Returns alpha (N x H x W float32, 0..1) and foreground (N x 3 x H x W
    uint8: the photo, with the studio's colour taken out of the band's
    pixels), on the photos' device.
    """
    n, _, height, width = photos.shape
    scale = max(1, round(max(height, width) / WORK_WIDTH))
    radius = max(1, math.ceil(band * max(height, width) / scale))  # the band's half-width in grid cells
    small = _shrink(photos, scale)                                   # N x 3 x h x w
    small_probs = _shrink(probs[:, None].float(), scale)[:, 0]       # N x h x w
    cells = _band_cells(small_probs, radius)                         # N x h x w bool
    # The smooth maps, all on the grid: guided-filter coefficients (4), the
    # studio beside the car in this photo (3), the studio in the views (3, NaN
    # where too few views show it) and the car's colour near its edge (3).
    guide = _guided_filter(small / 255, small_probs, radius, GUIDE_EPS)
    studio = _normalized_blur(small, small_probs < SURE, 2 * radius)
    sure_car = small_probs > 1 - SURE
    maps = [guide, studio]
    if views is not None:
        seen = _views_studio(views, view_probs, scale, cells)
        sure_car &= ~((small - seen).abs().amax(1) < 12)  # studio-coloured: a halo of the network's
        maps.append(seen)
    maps.append(_normalized_blur(small, sure_car, 2 * radius))
    maps = torch.cat(maps, 1)

    alpha = (probs > 0.5).float()
    foreground = torch.empty(photos.shape, dtype=torch.uint8, device=photos.device)
    foreground.copy_(photos if photos.dtype == torch.uint8 else photos.round().clamp(0, 255))
    image, offset, at = _band_pixels(cells, scale, height, width)    # photo, pixel, grid position
    if image.numel() == 0:
        return alpha, foreground
    planes = foreground.view(n, 3, -1)
    pixel = planes[image, :, offset].float()                         # K x 3
    value = _bilinear(maps, at)                                      # K x 10 or 13
    a, b, studio_k, car_k = value[:, :3], value[:, 3], value[:, 4:7], value[:, -3:]
    # The guided filter at full resolution: the window's linear model of probability
    # from colour, applied to the pixel's own colour. It leaves the mean probability
    # of each side of the edge near the edge: stretched back to 0 and 1 as the
    # plain cut-out is.
    estimate = _stretch(((pixel / 255) * a).sum(1) + b)
    if views is not None:  # the studio where the views show it, else the photo's own nearby
        seen = value[:, 7:10]
        known = ~seen.isnan().any(1)
        studio_k[known] = seen[known]
    alpha.view(n, -1)[image, offset] = estimate
    # The car's own colour: the blurred estimate, corrected by the compositing equation.
    a = estimate[:, None]
    colour = car_k + a * (pixel - a * car_k - (1 - a) * studio_k)
    planes[image, :, offset] = colour.round().clamp(0, 255).byte()
    return alpha, foreground


def _stretch(probs: torch.Tensor) -> torch.Tensor:
    """0.25..0.75 to 0..1 with a smoothstep: what the plain cut-out does with probabilities."""
    t = ((probs - 0.25) / 0.5).clamp(0, 1)
    return t * t * (3 - 2 * t)


# -- the grid --------------------------------------------------------------------------------------

def _shrink(images: torch.Tensor, scale: int) -> torch.Tensor:
    """N x C x H x W (any dtype) -> float N x C x h x w on the grid (the mean of
    each scale x scale cell, edge cells partial), one image at a time so that
    no full-resolution float copy of a whole set is ever made."""
    return torch.cat([F.avg_pool2d(image[None].float(), scale, ceil_mode=True) for image in images])


def _box(images: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window, clipped at the border (running sums: cost
    independent of r)."""
    for dim in (3, 2):
        size = images.shape[dim]
        sums = images.cumsum(dim)
        pad = [0, 0] * (3 - dim) + [radius + 1, 0]
        sums = F.pad(sums, pad)  # zeros before the first pixel...
        last = sums.narrow(dim, sums.shape[dim] - 1, 1)
        sums = torch.cat([sums, last.expand(*[radius if d == dim else -1 for d in range(4)])], dim)  # ...the total after
        window = sums.narrow(dim, 2 * radius + 1, size) - sums.narrow(dim, 0, size)
        index = torch.arange(size, device=images.device)
        count = ((index + radius + 1).clamp(max=size) - (index - radius).clamp(min=0)).to(images.dtype)
        images = window / (count[:, None] if dim == 2 else count)
    return images


def _band_cells(probs: torch.Tensor, radius: int) -> torch.Tensor:
    """Grid cells within `radius` of an unsure one (or of the 0.5 edge)."""
    unsure = (probs > SURE) & (probs < 1 - SURE)
    car = (probs > 0.5).float()[:, None]
    edge = F.max_pool2d(car, 3, 1, 1)[:, 0] != -F.max_pool2d(-car, 3, 1, 1)[:, 0]
    return F.max_pool2d((unsure | edge).float()[:, None], 2 * radius + 1, 1, radius)[:, 0] > 0


def _band_pixels(cells: torch.Tensor, scale: int, height: int, width: int):
    """Full-resolution pixels of the band's cells: their photo, their flat
    index in it, and their centre's position on the grid (K x 3: photo, y, x)."""
    image, row, col = cells.nonzero(as_tuple=True)
    offset = torch.arange(scale, device=cells.device)
    y = (row[:, None, None] * scale + offset[None, :, None]).expand(-1, scale, scale).reshape(-1)
    x = (col[:, None, None] * scale + offset[None, None, :]).expand(-1, scale, scale).reshape(-1)
    image = image[:, None].expand(-1, scale * scale).reshape(-1)
    keep = (y < height) & (x < width)
    image, y, x = image[keep], y[keep], x[keep]
    at = torch.stack([image.float(), (y + 0.5) / scale - 0.5, (x + 0.5) / scale - 0.5], 1)
    return image, y * width + x, at


def _bilinear(maps: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Values of N x C x h x w maps at K grid positions (image, y, x): K x C."""
    n, channels, h, w = maps.shape
    table = maps.permute(0, 2, 3, 1).reshape(-1, channels)
    image = at[:, 0].long()
    y = at[:, 1].clamp(0, h - 1)
    x = at[:, 2].clamp(0, w - 1)
    y0, x0 = y.floor().long(), x.floor().long()
    y1, x1 = (y0 + 1).clamp(max=h - 1), (x0 + 1).clamp(max=w - 1)
    fy, fx = (y - y0)[:, None], (x - x0)[:, None]
    base = image * h
    row0, row1 = (base + y0) * w, (base + y1) * w
    return ((table[row0 + x0] * (1 - fx) + table[row0 + x1] * fx) * (1 - fy)
            + (table[row1 + x0] * (1 - fx) + table[row1 + x1] * fx) * fy)


# -- the smooth maps -------------------------------------------------------------------------------

def _guided_filter(guide: torch.Tensor, probs: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """Colour guided filter (He et al.): per window, probs ~ a . guide + b.
    Returns the window-averaged coefficients N x 4 x h x w (a: 3, b: 1)."""
    p = probs[:, None]
    ii = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    stats = _box(torch.cat([guide, p, guide * p] + [guide[:, i:i + 1] * guide[:, j:j + 1] for i, j in ii], 1),
                 radius)
    mean_i, mean_p, mean_ip, mean_ii = stats[:, :3], stats[:, 3:4], stats[:, 4:7], stats[:, 7:]
    cov_ip = mean_ip - mean_i * mean_p
    var = [mean_ii[:, k] - mean_i[:, i] * mean_i[:, j] for k, (i, j) in enumerate(ii)]
    s00, s01, s02, s11, s12, s22 = var
    s00, s11, s22 = s00 + eps, s11 + eps, s22 + eps
    # The symmetric 3x3 inverse by cofactors, element-wise over the grid.
    c00, c01, c02 = s11 * s22 - s12 * s12, s02 * s12 - s01 * s22, s01 * s12 - s02 * s11
    c11, c12, c22 = s00 * s22 - s02 * s02, s01 * s02 - s00 * s12, s00 * s11 - s01 * s01
    det = s00 * c00 + s01 * c01 + s02 * c02
    x, y, z = cov_ip[:, 0], cov_ip[:, 1], cov_ip[:, 2]
    a = torch.stack([c00 * x + c01 * y + c02 * z, c01 * x + c11 * y + c12 * z,
                     c02 * x + c12 * y + c22 * z], 1) / det[:, None]
    b = mean_p - (a * mean_i).sum(1, keepdim=True)
    return _box(torch.cat([a, b], 1), radius)


def _normalized_blur(images: torch.Tensor, weight: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean colour of the weighted pixels near each cell (two scales: near first)."""
    w = weight.float()[:, None]
    near, far = (_box(torch.cat([images * w, w], 1), r) for r in (radius, 4 * radius))
    mean = lambda sums: sums[:, :3] / sums[:, 3:].clamp(min=1e-6)  # noqa: E731
    return torch.where(near[:, 3:] > 1e-3, mean(near), torch.where(far[:, 3:] > 1e-3, mean(far), images))


def _views_studio(views: torch.Tensor, view_probs: torch.Tensor | None, scale: int,
                  cells: torch.Tensor) -> torch.Tensor:
    """The studio on the grid at the band's cells (NaN elsewhere): per cell the
    median of the views whose own probabilities say studio there, where at
    least MIN_STUDIO_VIEWS do (without probabilities: of every view)."""
    small = _shrink(views, scale)                                           # V x 3 x h x w
    image, row, col = cells.nonzero(as_tuple=True)
    values = small[:, :, row, col]                                          # V x 3 x K
    known = torch.ones(len(row), dtype=torch.bool, device=cells.device)
    if view_probs is not None:
        most = F.max_pool2d(view_probs[:, None].float(), scale, ceil_mode=True)[:, 0]   # V x h x w
        shows = most[:, row, col] < STUDIO_BELOW                             # V x K
        values = values.masked_fill(~shows[:, None], float("nan"))
        known = shows.sum(0) >= MIN_STUDIO_VIEWS
    out = torch.full((len(cells), 3, *cells.shape[1:]), float("nan"), device=cells.device)
    out[image[known], :, row[known], col[known]] = values[:, :, known].nanmedian(0).values.T
    return out

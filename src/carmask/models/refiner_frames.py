"""The edge refiner on whole 512x512 frames, as the predictor and the
refiner's training both run it: the studio behind each photo (`set_studios`:
the median of the car's views that show the studio at each pixel;
`photo_studio`: for a single photo, the studio around the car, the estimate
`carmask.refine` makes) and `refine_frames`, the predictor's join."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from carmask.inputs.background import median
from carmask.inputs.resize import resize_image, resize_map
from carmask.inputs.spec import MIN_VIEWS, NotEnoughViews
from carmask.models.refiner import SIZE, STUDIO_BELOW, EdgeRefiner, TileRefiner


def set_studios(photos: torch.Tensor, counts: Sequence[int], coarse: torch.Tensor | None = None) -> torch.Tensor:
    """N x 3 x H x W uint8: for cars one after another in `photos` (N x 3 x H x W
    uint8, `counts[k]` views of car k, at least 3), the studio behind each
    photo: the per-pixel median of the views that show the studio there
    (their coarse probabilities, N x H x W, below STUDIO_BELOW), where at
    least 3 do; elsewhere (and without `coarse`) the median of all views, as
    the coarse model's own input has it. Near the car's outline the plain
    median often shows the car (under the car, on the roof line)."""
    starts = [sum(counts[:k]) for k in range(len(counts))]
    out = torch.empty_like(photos)
    for start, count in zip(starts, counts):
        views = photos[start : start + count]
        if count < MIN_VIEWS:
            raise NotEnoughViews(f"a studio needs at least {MIN_VIEWS} views of the same car, got {count}")
        if coarse is None:
            out[start : start + count] = median(list(views.unbind(0)))
            continue
        hidden = (coarse[start : start + count] >= STUDIO_BELOW)[:, None]  # count x 1 x H x W
        # views that show the car are set alternately to 0 and 255: the median of all
        # is then that of the others (within one rank), by the uint8 sorting network
        filler = (hidden.cumsum(0, dtype=torch.int16) % 2 == 0).to(torch.uint8).mul_(255)
        studio = median(list(torch.where(hidden, filler, views).unbind(0)))
        # where fewer than MIN_VIEWS show the studio, the median of all views (only there: it is costly)
        lacking = (~hidden).sum(0, dtype=torch.int16)[0] < MIN_VIEWS  # H x W
        if lacking.any():
            studio[:, lacking] = median(list(views[:, :, lacking].unbind(0)))
        out[start : start + count] = studio
    return out


def photo_studio(photos: torch.Tensor, coarse: torch.Tensor, grid: int = 128) -> torch.Tensor:
    """N x 3 x H x W uint8: the studio behind each photo estimated from the photo
    alone, as `carmask.refine` does for a single photo: the cells (on a grid
    `grid` cells across) that the coarse model is sure are studio, carried
    inwards by a push-pull fill, then scaled back up."""
    from carmask.refine import SURE, _fill

    n, _, height, width = photos.shape
    size = (grid, max(1, round(grid * height / width)))
    small = resize_image(photos, size).float()
    sure = resize_map(coarse.float()[:, None], size) < SURE
    filled = torch.cat([_fill(small[i : i + 1], sure[i : i + 1]) for i in range(n)])
    return (
        F.interpolate(filled, size=(height, width), mode="bilinear", align_corners=False)
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
        .contiguous(memory_format=torch.channels_last)
    )


def to_refiner_size(images: torch.Tensor, size: tuple[int, int] = SIZE) -> torch.Tensor:
    """N x 3 x H x W uint8 photos at the refiner's size (antialiased, as the coarse models' frames)."""
    return resize_image(images, size)


@torch.inference_mode()
def refine_frames(
    refiner: EdgeRefiner | TileRefiner,
    photos: torch.Tensor,
    probs: torch.Tensor,
    views: Sequence[Sequence[int]],
    tta: bool = False,
) -> torch.Tensor:
    """The predictor's join: a batch's coarse probabilities at 512x512 refined,
    the studio behind each photo found here. N x 512 x 512 float32 on the
    tensors' device.

    Where it runs: in the predictor's finishing step, after the coarse
    model's probabilities are pasted back onto the 512x512 frame (holes
    filled, each crop resized into its box: `postprocess.place(probs, boxes,
    model.spec.frame, [SIZE] * N)`, then `.full()`) and before the resize to
    the output size (bilinear, then the threshold at 0.5, the soft
    probabilities for `predict`, the alpha for a cut-out).

    `photos`: N x 3 x 512 x 512 uint8, each photo squashed to 512x512 as the
    coarse models' frames are (`to_refiner_size`: antialiased; a photo
    already 512x512 as it is); `probs`: N x 512 x 512 float 0..1, as above;
    `views[i]`: the indices in the batch of the views photo i's car came with,
    itself included, as `predict.Batch.views` has them. The studio: for a
    set (at least MIN_VIEWS views) the per-pixel median of the set's views
    that show the studio there (`set_studios`: their coarse probability
    below STUDIO_BELOW), the same for every view of the set; for a photo
    alone (fewer views), the studio estimated from the photo itself
    (`photo_studio`, as `carmask.refine` makes it). One refiner serves both:
    it was trained on multiview-fast with the set's studio and on rgb-fast
    with the photo's own. Pixels outside the band (the coarse probability
    within `refiner.low` of 0 or 1) come back as they went in.
    """
    studios = torch.empty_like(photos)
    alone = [i for i, v in enumerate(views) if len(v) < MIN_VIEWS]
    for group in dict.fromkeys(tuple(v) for v in views if len(v) >= MIN_VIEWS):
        members = list(group)
        studios[members] = set_studios(photos[members], [len(members)], probs[members])
    if alone:
        studios[alone] = photo_studio(photos[alone], probs[alone])
    return refine_batch(refiner.to(photos.device), photos, studios, probs, tta=tta)


# -- the refiner on band pixels and tiles ----------------------------------------------------------------


def band(coarse: torch.Tensor, low: float) -> torch.Tensor:
    """Flat indices into N x H x W `coarse` probabilities (float 0..1, or uint8
    0..255) of the pixels the refiner re-decides."""
    if coarse.dtype == torch.uint8:
        lo, hi = round(low * 255), round((1 - low) * 255)
    else:
        lo, hi = low, 1 - low
    flat = coarse.reshape(-1)
    return ((flat > lo) & (flat < hi)).nonzero()[:, 0]


def packed(photos: torch.Tensor, studios: torch.Tensor, coarse: torch.Tensor, pad: int = 0) -> torch.Tensor:
    """N x (H + 2 pad) x (W + 2 pad) int64: each pixel's 8 planes (photo RGB,
    studio RGB, coarse probability x 255, |photo - studio| in its largest
    channel) packed into 8 bytes, so that one gather pulls all of them; a
    border of `pad` zeros, so that a patch never needs clamping."""
    n, _, height, width = photos.shape
    out = torch.zeros((n, height + 2 * pad, width + 2 * pad, 8), dtype=torch.uint8, device=photos.device)
    inner = out[:, pad : pad + height, pad : pad + width]
    inner[..., 0:3] = photos.permute(0, 2, 3, 1)
    inner[..., 3:6] = studios.permute(0, 2, 3, 1)
    inner[..., 6] = coarse if coarse.dtype == torch.uint8 else to_uint8(coarse)
    inner[..., 7] = (torch.maximum(photos, studios) - torch.minimum(photos, studios)).amax(1)
    return out.view(torch.int64)[..., 0]


def patches(table: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """K x k x 8 uint8: the pixels of a packed table (see `packed`, its border
    at least as wide as the largest offset) around the pixels at flat indices
    `index` into the N x H x W frames inside the border, moved by each of the
    k `offsets` (dy, dx)."""
    pad = int(offsets.abs().max()) if len(offsets) else 0
    n, padded_height, padded_width = table.shape
    height, width = padded_height - 2 * pad, padded_width - 2 * pad
    image, pixel = index.div(height * width, rounding_mode="floor"), index.remainder(height * width)
    row, col = pixel.div(width, rounding_mode="floor"), pixel.remainder(width)
    centre = (image * padded_height + row + pad) * padded_width + col + pad
    at = centre[:, None] + (offsets[:, 0] * padded_width + offsets[:, 1])[None, :]
    # index_select of a flat index: several times as fast as advanced indexing on the CPU
    return table.reshape(-1).index_select(0, at.reshape(-1)).view(torch.uint8).view(len(index), len(offsets), 8)


@torch.inference_mode()
def refine_batch(
    refiner: EdgeRefiner | TileRefiner,
    photos: torch.Tensor,
    studios: torch.Tensor,
    coarse: torch.Tensor,
    chunk: int = 65536,
    tta: bool = False,
) -> torch.Tensor:
    """Refined probabilities: N x H x W float32, on the tensors' device.

    `photos`: N x 3 x H x W uint8, the photos at the refiner's size (512x512
    for the shipped ones: squash a 1918x1280 photo to it as the coarse
    models do); `studios`: N x 3 x H x W uint8, the studio behind each photo
    (`set_studios` for a car's views, `photo_studio` for a photo alone);
    `coarse`: N x H x W, the coarse model's probabilities at that size
    (float 0..1). Outside the band the coarse probabilities are returned as
    they are; `chunk`: pixels per call of the network, the point head's band
    pixels or the tiles' (bounds memory; 65536, 16 tiles of 64x64, whose
    features stay in the CPU's cache: 1.4x faster than 32 of them). `tta`: a
    TileRefiner's correction averaged with that of each tile mirrored (the
    point head has none).
    """
    if isinstance(refiner, TileRefiner):
        per_call = max(1, chunk // refiner.tile**2)
        return _refine_tiles(refiner, photos, studios, coarse.float(), chunk=per_call, tta=tta)
    coarse = coarse.float()
    out = coarse.clone()
    index = band(coarse, refiner.low)
    if index.numel() == 0:
        return out
    offsets = refiner.offsets.to(photos.device)
    table = packed(photos, studios, coarse, refiner.reach)
    p = coarse.reshape(-1)[index].clamp(1e-4, 1 - 1e-4)
    logits = torch.logit(p)
    for start in range(0, len(index), chunk):
        part = slice(start, start + chunk)
        logits[part] += refiner(patches(table, index[part], offsets))
    out.view(-1)[index] = torch.sigmoid(logits)
    return out


def _refine_tiles(
    refiner: TileRefiner,
    photos: torch.Tensor,
    studios: torch.Tensor,
    coarse: torch.Tensor,
    chunk: int,
    tta: bool = False,
) -> torch.Tensor:
    """`refine_batch` for a TileRefiner: the frame cut into T x T tiles, the
    CNN run on those holding band pixels (cut straight from the photos, the
    studios and the coarse probabilities) in calls of `chunk` tiles, its
    correction added to the coarse logit at the band's pixels."""
    out = coarse.clone()
    n, height, width = coarse.shape
    t = refiner.tile
    inside = (coarse > refiner.low) & (coarse < 1 - refiner.low)
    if not inside.any():
        return out
    pad = (0, -width % t, 0, -height % t)
    gh, gw = (height + pad[3]) // t, (width + pad[1]) // t

    # N x C x H x W -> N x gh x gw x C x T x T: a view of contiguous planes (so `out`'s tiles write into
    # it), else a copy (padded or channels-last ones, which are only read)
    def tiles(planes: torch.Tensor) -> torch.Tensor:
        planes = F.pad(planes, pad) if any(pad) else planes
        return planes.reshape(n, -1, gh, t, gw, t).permute(0, 2, 4, 1, 3, 5)

    scaled = to_uint8(coarse)[:, None]  # as the refiner was trained
    grids = [tiles(photos), tiles(studios), tiles(scaled)]
    grid_out, grid_inside, grid_coarse = tiles(out[:, None]), tiles(inside[:, None]), tiles(coarse[:, None])
    which = grid_inside.flatten(3).any(3).nonzero()  # the tiles holding band pixels
    for start in range(0, len(which), chunk):
        at = which[start : start + chunk].unbind(1)
        planes = torch.cat([g[at] for g in grids], 1)  # K x 7 x T x T uint8
        p = grid_coarse[at].clamp(1e-4, 1 - 1e-4)
        correction = _corrections(refiner, planes, chunk, tta)
        refined = torch.sigmoid(torch.logit(p) + correction[:, None])
        grid_out[at] = torch.where(grid_inside[at], refined, grid_coarse[at])
    if any(pad):
        return grid_out.permute(0, 3, 1, 4, 2, 5).reshape(n, height + pad[3], width + pad[1])[:, :height, :width]
    return out


def _corrections(refiner: TileRefiner, planes: torch.Tensor, size: int, tta: bool) -> torch.Tensor:
    """The CNN's corrections of K <= `size` tiles (K x 7 x T x T planes), K x
    T x T, from a call of exactly `size` tiles (padded with empty ones): a
    convolution's result depends on its call's batch size, and so a photo's
    would on the other photos of its batch (up to 2e-4)."""
    count = len(planes)
    if count < size:
        planes = torch.cat([planes, planes.new_zeros((size - count, *planes.shape[1:]))])
    correction = refiner(planes).float()
    if tta:  # the mirrored tile's correction, mirrored back (the refiner trained on mirrored tiles)
        correction = (correction + refiner(planes.flip(-1)).float().flip(-1)) / 2
    return correction[:count]


def to_uint8(probs: torch.Tensor) -> torch.Tensor:
    """Probabilities 0..1 as 0..255 (the planes the refiners read)."""
    return probs.mul(255).round_().clamp_(0, 255).to(torch.uint8)

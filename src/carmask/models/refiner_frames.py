"""The edge refiner on whole 512x512 frames, as the predictor and the
refiner's training both run it: the studio behind each photo (`set_studios`:
the median of the car's views that show the studio at each pixel;
`photo_studio`: for a single photo, the studio around the car, the estimate
`carmask.refine` makes) and `refine_frames`, the predictor's join."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from carmask.inputs.background import backgrounds, median
from carmask.inputs.resize import resize_image, resize_map
from carmask.inputs.spec import MIN_VIEWS
from carmask.models.refiner import SIZE, STUDIO_BELOW, EdgeRefiner, TileRefiner, refine_batch


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
        studio = backgrounds(views, [count]).median
        if coarse is not None:
            hidden = (coarse[start : start + count] >= STUDIO_BELOW)[:, None].expand_as(views)
            # views that show the car are set alternately to 0 and 255: the median of all
            # is then that of the others (within one rank), by the uint8 sorting network
            filler = (hidden.cumsum(0, dtype=torch.int16) % 2 == 0).to(torch.uint8).mul_(255)
            masked = median(list(torch.where(hidden, filler, views).unbind(0)))
            enough = (~hidden[:, :1]).sum(0, dtype=torch.int16) >= MIN_VIEWS
            studio = torch.where(enough, masked, studio[0])[None]
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
    refiner: EdgeRefiner | TileRefiner, photos: torch.Tensor, probs: torch.Tensor, views: Sequence[Sequence[int]]
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
    return refine_batch(refiner.to(photos.device), photos, studios, probs)

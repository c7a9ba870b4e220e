"""The network's inputs: the one function that builds them, for training and prediction alike.

From full-resolution photos (3 x H x W uint8, see `decode`), for the cars of a batch:

1. `frames`: one antialiased bilinear resize to the spec's frame (uint8);
2. `backgrounds`: each car's median and mean; `|photo - background|` differences;
   the differing pixels give the crop box (grown by the spec's margin) and
   each photo's share of the frame that differs (`Inputs.differing`, which the
   set policy reads);
3. `crop_resize`: each photo's channels cropped to its box and resized
   (antialiased bilinear) to the network's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from carmask.inputs.background import absdiff, backgrounds, crop_boxes, differing
from carmask.inputs.resize import crop_resize, frames
from carmask.inputs.spec import MIN_VIEWS, Box, InputSpec, NotEnoughViews


@dataclass
class Inputs:
    """What the network gets for a batch of photos, and what was learned on the way."""

    x: torch.Tensor  # N x C x H x W uint8 at `spec.size`
    boxes: list[Box]  # the crop box of each photo, in frame pixels
    differing: list[float] | None  # per photo: share of the frame that differs from its car's median


def model_inputs(frames: torch.Tensor, counts: Sequence[int], spec: InputSpec) -> Inputs:
    """The network inputs of cars one after another in `frames` (N x 3 x h x w
    uint8 at `spec.frame`), `counts[k]` views of car k: the one function that
    builds inputs, for training and prediction alike. A model that compares
    photos with their car's views needs every count >= MIN_VIEWS."""
    if spec.needs_views and min(counts, default=MIN_VIEWS) < MIN_VIEWS:
        raise NotEnoughViews(
            f"this model compares each photo with its car's other views: it needs a set of at least {MIN_VIEWS} views"
        )
    height, width = frames.shape[-2:]
    planes = {"rgb": frames}
    share, boxes = None, torch.tensor([[0, 0, width, height]] * len(frames))
    if spec.needs_views:
        car = torch.repeat_interleave(
            torch.arange(len(counts), device=frames.device),
            torch.tensor(counts, device=frames.device),
            output_size=len(frames),
        )
        background = backgrounds(frames, counts)
        planes["median_diff"] = absdiff(frames, background.median[car])
        planes["mean_diff"] = absdiff(frames, background.mean[car])
        differ = differing(planes["median_diff"], spec.crop_fuzz)
        share = differ.float().mean(dim=(1, 2))
        if spec.crop:
            boxes = crop_boxes(differ, spec.crop_margin)
        # one trip to the host for the boxes and the shares together
        host = torch.cat([boxes.to(share.device).float(), share[:, None]], dim=1).tolist()
        boxes, share = [Box(*map(int, row[:4])) for row in host], [row[4] for row in host]
    else:
        boxes = [Box(*row) for row in boxes.tolist()]
    return Inputs(crop_resize([planes[name] for name in spec.channels], boxes, spec.size), boxes, share)


def car_inputs(photos: Sequence[torch.Tensor], spec: InputSpec) -> Inputs:
    """The inputs for the full-resolution photos of one car (all of them one
    set), or of one photo: what the training cache stores and what
    `Predictor.model_inputs` shows."""
    return model_inputs(frames(photos, spec.frame), [len(photos)] if spec.needs_views else [1] * len(photos), spec)

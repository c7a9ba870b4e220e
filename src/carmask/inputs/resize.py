"""Resizes on the photos' device: photos (uint8, antialiased bilinear) and maps (float, bilinear).

`frames` brings full-resolution photos to a spec's frame; `crop_resize` crops
each photo's planes to its box and resizes them to the network's size;
`resize` does the same resizes for numpy callers outside the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from carmask.inputs.spec import Box


def resize_image(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of N x C x H x W uint8 images to (width, height).

    On the CPU, torch's uint8 kernel (fastest on 3 channels, channels last);
    a GPU has none, so there through float32, rounded back.
    """
    width, height = size
    if images.shape[-1] == width and images.shape[-2] == height:
        return images
    if images.device.type == "cpu":
        return F.interpolate(images, size=(height, width), mode="bilinear", antialias=True)
    out = F.interpolate(images.float(), size=(height, width), mode="bilinear", antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def resize_map(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of N x C x H x W float maps (probabilities, soft masks)
    to (width, height); antialiased where it shrinks."""
    width, height = size
    if maps.shape[-1] == width and maps.shape[-2] == height:
        return maps
    shrinking = width < maps.shape[-1] or height < maps.shape[-2]
    return F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A numpy image (uint8 H x W x C) or map (float H x W) resized to (width,
    height) by the same torch resizes, for callers outside the pipeline."""
    tensor = torch.from_numpy(np.require(image, requirements=["C", "W"]))  # a copy if read-only
    if image.dtype == np.uint8:
        planes = tensor[None, :, :, None] if image.ndim == 2 else tensor[None].permute(0, 3, 1, 2)
        out = resize_image(planes, size).permute(0, 2, 3, 1)[0]
        return out[..., 0].numpy() if image.ndim == 2 else out.contiguous().numpy()
    maps = tensor.float().reshape(image.shape[0], image.shape[1], -1).permute(2, 0, 1)[None]
    out = resize_map(maps, size)[0].permute(1, 2, 0)
    return out.reshape(size[1], size[0], *image.shape[2:]).contiguous().numpy()


def frames(photos: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Full-resolution photos (3 x H x W uint8, any sizes; those already at
    `size` are taken as they are) -> N x 3 x h x w uint8 at the frame `size`
    (width, height), channels last."""
    width, height = size
    out = torch.empty(
        (len(photos), height, width, 3), dtype=torch.uint8, device=photos[0].device if photos else "cpu"
    ).permute(0, 3, 1, 2)
    for i, photo in enumerate(photos):
        out[i] = resize_image(photo[None], size)[0]
    return out


def crop_resize(planes: Sequence[torch.Tensor], boxes: Sequence[Box], size: tuple[int, int]) -> torch.Tensor:
    """Photo i of each of the N x 3 x h x w uint8 `planes` cropped to box i and
    resized (antialiased bilinear) to `size` (width, height): N x C x H x W
    uint8, the planes' channels one after another."""
    if planes[0].device.type != "cpu":
        planes = [torch.cat(list(planes), dim=1)]  # a GPU resizes all channels in one kernel
    if not boxes:
        return planes[0].new_empty((0, sum(p.shape[1] for p in planes), size[1], size[0]))
    return torch.cat(
        [
            torch.cat(
                [resize_image(p[i : i + 1, :, box.top : box.bottom, box.left : box.right], size) for p in planes], dim=1
            )
            for i, box in enumerate(boxes)
        ]
    )

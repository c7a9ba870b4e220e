"""A learned edge refiner: the coarse model's outline re-decided, pixel by pixel, at 512x512.

The coarse U-Net sees a 128x128 crop, so at 512x512 its outline is off by
about a pixel: rounded corners, 1-2 px slivers. 95% of its wrong pixels lie
where its own probability is unsure (LOW < p < 1 - LOW: about 3% of the
frame), so only those pixels are re-decided, PointRend-like:

    band    = pixels with LOW < coarse < 1 - LOW
    patches = for each band pixel, its (2r+1)^2 neighbours (plus a sparse ring
              further out) in 8 planes: photo RGB, studio RGB (the empty
              studio behind the car), coarse probability and how far the
              photo is from the studio (the largest channel's difference), uint8
    logit   = logit(coarse) + MLP(patches)        (a correction of the coarse logit)

The other shape, `TileRefiner`, a small CNN on the band's tiles, ships
(`edge-refiner-fast`). This module holds the models and their files; running
them on frames (the band, the tiles or patches, `refine_batch`, the studio
behind the car, the predictor's join) is `carmask.models.refiner_frames`.
Checkpoints are plain tensors loaded with `weights_only=True`, weights
stored in half precision. Measurements and the alternatives tried:
docs/RESULTS.md, "Learned edge refiner".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from carmask.files import atomic_write

FORMAT = "carmask-refiner-1"
SIZE = (512, 512)  # (width, height): the size the refiners are trained at
PLANES = 8  # photo RGB, studio RGB, coarse probability, |photo - studio| (largest channel)
STUDIO_BELOW = 0.1  # a view shows the studio at a pixel where its coarse probability is below this
LIMITS = {
    "radius": (0, 8),
    "ring": (0, 16),
    "hidden": (1, 512),
    "layers": (1, 4),
    "channels": (1, 128),
    "dilation": (1, 32),
    "conv_layers": (1, 12),
    "tile": (8, 512),
    "fine": (1, 128),
}
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights" / "refiners"


class EdgeRefiner(nn.Module):
    """Point head on raw patches: K x k x 8 pixel values (0..255) -> K logit corrections.

    `radius`: the dense patch is (2 radius + 1)^2 pixels; `ring`: if > 0, 16
    more samples on a square of that radius (context: where the car's body
    and the floor are); `hidden`: the MLP's widths; `low`: the band's bound.
    """

    def __init__(self, radius: int = 3, ring: int = 0, hidden: Sequence[int] = (64, 32), low: float = 0.05):
        super().__init__()
        self.config = {"radius": int(radius), "ring": int(ring), "hidden": [int(h) for h in hidden], "low": float(low)}
        self.low = float(low)
        self.register_buffer("offsets", patch_offsets(radius, ring), persistent=False)
        layers, width = [], PLANES * len(self.offsets)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    @property
    def reach(self) -> int:
        """How far from its pixel a patch reaches (the border `packed` needs)."""
        return int(self.offsets.abs().max())

    @property
    def centre(self) -> int:
        """Index of the pixel itself among the patch's samples."""
        return int(((self.offsets == 0).all(1)).nonzero()[0, 0])

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        first = self.mlp[0]
        x = patches.reshape(len(patches), -1).to(first.weight.dtype)
        # pixel values to about -2..2, (x - 128) / 64, folded into the first layer: one pass over
        # the patches (the largest tensor here) instead of three
        hidden = F.linear(x, first.weight / 64, first.bias - 2 * first.weight.sum(1))
        return self.mlp[1:](hidden)[:, 0]


class TileRefiner(nn.Module):
    """A small dilated CNN on square tiles of the band: K x 8 x T x T pixel
    values (0..255, the planes of `packed`) -> K x T x T logit corrections.

    Inputs photo, studio, their difference (each 3 channels) and the coarse
    logit. With `fine` 0, the shape of the issue's quick experiment: 3x3
    convolutions of `channels` channels, one per entry of `dilations`, ReLU
    between them, a 1x1 head. With `fine` > 0, two scales, for half the
    cost on the same tiles: two 3x3 convolutions of `fine` channels at the tile's resolution,
    the dilated ones (the context: where body, wheel and floor are) at half
    of it, enlarged and joined to the fine features by one more 3x3
    convolution before the head. `tile`: the side of the tiles it runs on
    (the 512 frame is cut into a grid of them; only those holding band pixels run).
    """

    def __init__(
        self,
        channels: int = 32,
        dilations: Sequence[int] = (1, 1, 2, 4, 8, 1),
        tile: int = 64,
        low: float = 0.05,
        fine: int = 0,
    ):
        super().__init__()
        self.config = {
            "kind": "tiles",
            "channels": int(channels),
            "dilations": [int(d) for d in dilations],
            "tile": int(tile),
            "low": float(low),
        }
        if fine:
            self.config["fine"] = int(fine)
        self.low, self.tile, self.fine = float(low), int(tile), int(fine)
        layers, width = [], 10
        if fine:
            self.near = nn.Sequential(
                nn.Conv2d(10, fine, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(fine, fine, 3, padding=1), nn.ReLU(inplace=True),
            )  # fmt: skip
            layers, width = [nn.Conv2d(fine, channels, 3, stride=2, padding=1), nn.ReLU(inplace=True)], channels
        for d in dilations:
            layers += [nn.Conv2d(width, channels, 3, padding=d, dilation=d), nn.ReLU(inplace=True)]
            width = channels
        self.body = nn.Sequential(*layers)
        if fine:
            self.join = nn.Sequential(nn.Conv2d(fine + channels, fine, 3, padding=1), nn.ReLU(inplace=True))
            width = fine
        self.head = nn.Conv2d(width, 1, 1)
        nn.init.zeros_(self.head.weight)  # starts as the identity: the coarse logit unchanged
        nn.init.zeros_(self.head.bias)
        # channels last: on the CPU its convolutions and enlarging take half the time
        self.to(memory_format=torch.channels_last)

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        x = planes.to(self.head.weight.dtype)
        photo, studio = x[:, 0:3], x[:, 3:6]
        p = x[:, 6:7].div(255).clamp(1e-3, 1 - 1e-3)
        inputs = torch.cat([(photo - 128) / 64, (studio - 128) / 64, (photo - studio) / 64, torch.logit(p) / 4], 1)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
        if not self.fine:
            return self.head(self.body(inputs))[:, 0]
        near = self.near(inputs)
        far = F.interpolate(self.body(near), size=near.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.join(torch.cat([near, far], 1)))[:, 0]


def patch_offsets(radius: int, ring: int = 0) -> torch.Tensor:
    """k x 2 (dy, dx): the dense square of `radius`, then 16 samples on the square of radius `ring`."""
    d = torch.arange(-radius, radius + 1)
    offsets = torch.stack(torch.meshgrid(d, d, indexing="ij"), -1).reshape(-1, 2)
    if ring > 0:
        steps = torch.tensor([-ring, -ring // 2, 0, ring // 2])
        side = [torch.stack([steps, torch.full_like(steps, -ring)], 1)]  # left side, going down
        side.append(torch.stack([torch.full_like(steps, ring), steps], 1))  # bottom, going right
        side.append(torch.stack([-steps, torch.full_like(steps, ring)], 1))  # right, going up
        side.append(torch.stack([torch.full_like(steps, -ring), -steps], 1))  # top, going left
        offsets = torch.cat([offsets, *side])
    return offsets


# -- checkpoints -----------------------------------------------------------------------------------


def save(refiner: EdgeRefiner, path, meta: dict | None = None, half: bool = True) -> None:
    """Write a refiner checkpoint atomically: plain tensors (float16 by default), its config and meta."""
    state = {
        k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
        for k, v in refiner.state_dict().items()
    }
    payload = {"format": FORMAT, "config": refiner.config, "state_dict": state, "meta": dict(meta or {})}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load(path, map_location="cpu") -> tuple[EdgeRefiner | TileRefiner, dict]:
    """A refiner checkpoint (a path, or the name of a shipped one: `shipped`),
    loaded safely (`weights_only=True`, its config held to bounds and its
    weights to the config's shapes): the model in eval mode, float32, and its meta."""
    path = resolve(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # pickle errors, truncation, not a checkpoint: torch's words run to paragraphs
        raise ValueError(f"{path}: not a loadable refiner checkpoint") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a carmask refiner checkpoint")
    config = payload.get("config")
    build = _checked_config(config)
    if build is None:
        raise ValueError(f"{path}: refiner config {config!r} is unreadable or outside its bounds")
    with torch.device("meta"):  # shapes only: nothing is allocated
        skeleton = build()
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    state = payload.get("state_dict")
    if (
        not isinstance(state, dict)
        or not all(isinstance(v, torch.Tensor) for v in state.values())
        or {k: tuple(v.shape) for k, v in state.items()} != want
    ):
        raise ValueError(f"{path}: its weights do not fit a refiner of config {config}")
    refiner = build()
    refiner.load_state_dict({k: v.float() for k, v in state.items()})
    return refiner.eval(), payload.get("meta", {})


def _checked_config(config):
    """A function that builds the refiner of a checkpoint's config, or None
    where the config is unreadable or outside LIMITS."""

    def within(key, value):
        return isinstance(value, int) and not isinstance(value, bool) and LIMITS[key][0] <= value <= LIMITS[key][1]

    if not isinstance(config, dict) or not isinstance(config.get("low"), float) or not 0 < config["low"] < 0.5:
        return None
    if config.get("kind") == "tiles":
        dilations = config.get("dilations")
        if (
            set(config) - {"fine"} != {"kind", "channels", "dilations", "tile", "low"}
            or not within("fine", config.get("fine", 1))
            or not isinstance(dilations, list)
            or not LIMITS["conv_layers"][0] <= len(dilations) <= LIMITS["conv_layers"][1]
            or not all(within("dilation", d) for d in dilations)
            or not within("channels", config["channels"])
            or not within("tile", config["tile"])
        ):
            return None
        return lambda: TileRefiner(config["channels"], dilations, config["tile"], config["low"], config.get("fine", 0))
    hidden = config.get("hidden")
    if (
        set(config) != {"radius", "ring", "hidden", "low"}
        or not isinstance(hidden, list)
        or not LIMITS["layers"][0] <= len(hidden) <= LIMITS["layers"][1]
        or not all(within("hidden", h) for h in hidden)
        or not within("radius", config["radius"])
        or not within("ring", config["ring"])
    ):
        return None
    return lambda: EdgeRefiner(**config)


# -- the shipped refiners --------------------------------------------------------------------------


def shipped() -> list[str]:
    """Names of the shipped refiners (files in weights/refiners/; not coarse
    models: `carmask.models.shipped` does not list them)."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.pt"))


def resolve(name_or_path) -> Path:
    """The file of a shipped refiner's name, or a checkpoint path."""
    path = Path(name_or_path)
    if path.suffix == "" and not path.exists():
        path = SHIPPED_DIR / f"{name_or_path}.pt"
        if not path.exists():
            raise FileNotFoundError(
                f"no shipped refiner named {name_or_path!r}; shipped: {', '.join(shipped()) or 'none'}"
            )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such refiner file")
    return path


def is_refiner(name_or_path) -> bool:
    """Whether a name or path is a refiner: a shipped refiner's name, or a
    file that is a refiner checkpoint (read safely, nothing run)."""
    if str(name_or_path) in shipped():
        return True
    path = Path(name_or_path)
    if not path.is_file() or path.suffix != ".pt":
        return False
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def chosen(refiner, model=None, device="cpu"):
    """What a predictor's `refiner` stands for: None for None or "none"; for
    "auto" the shipped refiner made the default after the coarse models that
    `model` runs on `device` (`models.stands_for`: for None, the shipped
    defaults there), or None where there is none (a checkpoint, the seed, the
    accurate tier); else the name or path given."""
    if refiner is None or str(refiner) == "none":
        return None
    if str(refiner) != "auto":
        return refiner
    from carmask import models

    coarse, figures_of = set(models.stands_for(model, device)), catalog()
    for name in shipped():
        figures = figures_of.get(name, {})
        if coarse and figures.get("default") and coarse <= set(figures.get("after", [])):
            return name
    return None


def catalog() -> dict[str, dict]:
    """Measured figures of the shipped refiners (weights/refiners/catalog.json):
    name -> {recipe, after, dice_512_before, dice_512, cpu_s_per_photo, ...}."""
    path = SHIPPED_DIR / "catalog.json"
    return json.loads(path.read_text()) if path.exists() else {}

"""Training recipes: the settings that trained each shipped model, under its name.

One table, as nanoGPT keeps one small config per run: `carmask train DATA -o
RUN --recipe multiview-fast` trains the shipped `multiview-fast` again, and
flags change single fields (`--max-minutes 5`, `--lr 1e-3`). The benchmarks
(`ablation.py`, `gpu_train.py`, `seed_reproduce.py`) train the same recipes
through `recipe()`. Each model card in weights/ names its recipe and command.
Every recipe is written whole, the seed's included: `TrainConfig`'s defaults
are neutral. This module imports the settings (`carmask.train_config`), not
the training loop.
"""

from __future__ import annotations

from dataclasses import fields, replace

from carmask.inputs.spec import InputSpec
from carmask.models import ARCH_LIMITS
from carmask.train_config import RefinerConfig, TrainConfig

# The seed's input: 480x320 frame, auto-crop, 100x100, photo + median diff.
SEED_SPEC = InputSpec(("rgb", "median_diff"), size=(100, 100), frame=(480, 320), crop=True)
MULTIVIEW = ("rgb", "median_diff", "mean_diff")
# The U-Nets' loss, optimiser, schedule and augmentation; the time budget ends the run.
_UNET = dict(
    arch="unet",
    epochs=10_000,
    lr=3e-3,
    weight_decay=1e-4,
    dice_weight=1.0,
    edge_weight=2.0,
    augment=True,
    schedule="cosine",
)
_SMALL, _LARGE = {"width": 8, "depth": 4}, {"width": 32, "depth": 4}

RECIPES: dict[str, TrainConfig | RefinerConfig] = {
    # The seed write-up: its 3-layer CNN, photo + median difference in a 480x320
    # frame cropped to the car at 100x100, BCE, Adam 1e-3, batch 32.
    "seed": TrainConfig(
        arch="seed",
        spec=SEED_SPEC,
        epochs=40,
        batch_size=32,
        lr=1e-3,
        weight_decay=0.0,
        dice_weight=0.0,
        edge_weight=0.0,
        augment=False,
        schedule="constant",
        max_minutes=30,
    ),
    # The fast tier: 128x128 U-Nets trained on a 2-core CPU.
    "rgb-fast": TrainConfig(
        **_UNET, arch_kwargs=_SMALL, spec=InputSpec(("rgb",), size=(128, 128)), batch_size=16, max_minutes=60
    ),
    # Photo and background compared at 256x256, cropped to the car, resized to 128x128.
    "multiview-fast": TrainConfig(
        **_UNET,
        arch_kwargs=_SMALL,
        batch_size=16,
        max_minutes=45,
        spec=InputSpec(MULTIVIEW, size=(128, 128), frame=(256, 256), crop=True),
    ),
    # The ablation's multi-view input without the crop (not shipped: the crop beat it).
    "multiview-uncropped": TrainConfig(
        **_UNET, arch_kwargs=_SMALL, batch_size=16, max_minutes=70, spec=InputSpec(MULTIVIEW, size=(128, 128))
    ),
    # The accurate tier: 512x512 U-Nets for one GPU (bf16, channels-last, cache in GPU memory).
    "multiview-accurate": TrainConfig(
        **_UNET,
        arch_kwargs=_LARGE,
        batch_size=32,
        max_minutes=5,
        spec=InputSpec(MULTIVIEW, size=(512, 512), frame=(512, 512), crop=True),
    ),
    "rgb-accurate": TrainConfig(
        **_UNET, arch_kwargs=_LARGE, batch_size=32, max_minutes=2.5, spec=InputSpec(("rgb",), size=(512, 512))
    ),
    # A learned edge refiner on top of the fast models (carmask.train_refiner), on a 2-core CPU:
    # the band's pixels at 512x512 from the photo, the studio and the coarse probability.
    "edge-refiner": RefinerConfig(
        sources=(("multiview-fast", "set"), ("rgb-fast", "photo")),
        radius=3,
        ring=8,
        hidden=(128, 64),
        lr=1e-2,
        max_minutes=55,
    ),
    # The same sources, the quick experiment's shape: a dilated CNN (six 3x3 convolutions of
    # 32 channels, dilations 1-1-2-4-8-1) on 64x64 tiles of the band, its output added to the coarse logit.
    "edge-refiner-tiles": RefinerConfig(
        sources=(("multiview-fast", "set"), ("rgb-fast", "photo")),
        shape="tiles",
        channels=32,
        dilations=(1, 1, 2, 4, 8, 1),
        tile=64,
        batch_size=16,
        steps_per_epoch=1000,
        lr=3e-3,
        max_minutes=65,
    ),
    # For speed: two scales (16 channels at full resolution, the dilated 32 at half) on 32x32
    # tiles, a quarter of the tiles' CPU time; as many pixels a step (64 tiles). It runs on 64x64
    # tiles: fewer tile borders cut its context (held-out sets 0.99481 -> 0.99509, for 1.6x the work).
    "edge-refiner-fast": RefinerConfig(
        sources=(("multiview-fast", "set"), ("rgb-fast", "photo")),
        shape="tiles",
        channels=32,
        dilations=(1, 2, 4),
        fine=16,
        tile=32,
        run_tile=64,
        batch_size=64,
        steps_per_epoch=1000,
        lr=3e-3,
        max_minutes=60,
    ),
}
SPEC_FIELDS = ("channels", "size", "frame", "crop")
ARCH_FIELDS = ("width", "depth")


def recipe(name: str, **overrides) -> TrainConfig:
    """A fresh copy of recipe `name` with single fields changed (None changes
    nothing): TrainConfig's fields, `width` and `depth` of the U-Net, and
    `channels`, `size`, `frame`, `crop` of the input. Where the recipe's frame
    is its input size, a new `size` moves the frame with it."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
    base, given = RECIPES[name], {k: v for k, v in overrides.items() if v is not None}
    if isinstance(base, RefinerConfig):
        unknown = set(given) - {f.name for f in fields(RefinerConfig)}
        if unknown:
            raise ValueError(f"{', '.join(sorted(unknown))}: not an option of a refiner recipe")
        return replace(base, **given)
    unknown = set(given) - {f.name for f in fields(TrainConfig)} - set(SPEC_FIELDS) - set(ARCH_FIELDS)
    if unknown:
        raise ValueError(f"unknown recipe fields: {', '.join(sorted(unknown))}")
    spec_changes = {k: given.pop(k) for k in SPEC_FIELDS if k in given}
    if "size" in spec_changes and "frame" not in spec_changes and base.spec.frame == base.spec.size:
        spec_changes["frame"] = spec_changes["size"]
    arch_changes = {k: given.pop(k) for k in ARCH_FIELDS if k in given}
    arch = given.get("arch", base.arch)
    if set(arch_changes) - set(ARCH_LIMITS.get(arch, {})):
        raise ValueError(f"{', '.join(sorted(arch_changes))}: not an option of the {arch} architecture")
    arch_kwargs = {**(base.arch_kwargs if arch == base.arch else {}), **arch_changes}
    spec = replace(given.pop("spec", base.spec), **spec_changes)
    return replace(base, spec=spec, arch_kwargs=arch_kwargs, **given)

"""`TrainConfig` and `RefinerConfig`: one training run's settings, without the loops that use them.

The defaults are neutral (no recipe's): plain BCE, no weight decay, no
augmentation, a constant learning rate, no time budget; a model's
architecture and input have none and must be named. Every recipe, the
seed write-up's included, is written whole in `carmask.recipes.RECIPES`,
which imports this module and not the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from carmask.inputs.spec import InputSpec


@dataclass(kw_only=True)
class TrainConfig:
    """One training run's settings (the recipes: `carmask.recipes`)."""

    arch: str  # a name of carmask.models' registry
    arch_kwargs: dict = field(default_factory=dict)
    spec: InputSpec  # what the network sees
    epochs: int = 1
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.15
    val_cars: list[str] | None = None  # hold out exactly these cars instead (e.g. another run's split)
    seed: int = 0
    dice_weight: float = 0.0  # 0: plain BCE; >0 adds soft-dice loss
    edge_weight: float = 0.0  # extra BCE weight on pixels near the car's edge
    augment: bool = False
    schedule: str = "constant"  # or "cosine" (warm-up, then cosine decay)
    mixed_precision: bool = True  # bf16 autocast on CUDA; ignored on the CPU
    max_minutes: float | None = None  # a time budget: the schedule follows it, then stop


@dataclass
class RefinerConfig:
    """One refiner training run's settings (see `carmask.recipes`)."""

    # (coarse model: a shipped name or a checkpoint path, studio: "set", the views' median where
    # they show it, or "photo", the single-photo estimate); one refiner learns them all
    sources: tuple[tuple[str, str], ...] = (("multiview-fast", "set"), ("rgb-fast", "photo"))
    shape: str = "points"  # "points": EdgeRefiner (MLP on band pixels' patches);
    # "tiles": TileRefiner (dilated CNN on band tiles)
    radius: int = 3  # points: the patch and its ring, the MLP's widths
    ring: int = 8
    hidden: tuple[int, ...] = (64, 32)
    channels: int = 32  # tiles: the CNN's width, its dilations, the tiles' side
    dilations: tuple[int, ...] = (1, 1, 2, 4, 8, 1)
    tile: int = 64
    fine: int = 0  # tiles: > 0, two scales: this many channels at full resolution, the dilated ones at half
    # tiles: the side of the tiles it runs on in the predictor (0: `tile`, the training tiles'); larger
    # ones cut its context at fewer tile borders (the network is convolutional: any side works)
    run_tile: int = 0
    low: float = 0.05  # the band: low < coarse probability < 1 - low
    perturb: int = 2  # perturbed coarse copies per photo of the coarse model's training cars
    batch_size: int = 8192  # band pixels per step (tiles: tiles per step)
    buffer: int = 64  # photos held in memory; `refresh` of them replaced each step
    refresh: int = 2
    steps_per_epoch: int = 2000
    epochs: int = 10_000
    lr: float = 3e-3
    weight_decay: float = 1e-4
    jitter: float = 0.15  # colour gain and offset of the patches (photo and studio alike)
    schedule: str = "cosine"
    val_fraction: float = 0.15
    val_cars: list[str] | None = None
    seed: int = 0
    max_minutes: float | None = 60.0
    # cars whose coarse outputs are out-of-sample (the coarse model never trained on them)
    # and may be trained on; the rest of the validation cars are measured on
    train_on_val: list[str] = field(default_factory=list)

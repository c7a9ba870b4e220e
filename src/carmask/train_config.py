"""`TrainConfig`: one training run's settings, without the loop that uses them.

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
    arch: str                  # a name of carmask.models' registry
    arch_kwargs: dict = field(default_factory=dict)
    spec: InputSpec            # what the network sees
    epochs: int = 1
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.15
    val_cars: list[str] | None = None  # hold out exactly these cars instead (e.g. another run's split)
    seed: int = 0
    dice_weight: float = 0.0   # 0: plain BCE; >0 adds soft-dice loss
    edge_weight: float = 0.0   # extra BCE weight on pixels near the car's edge
    augment: bool = False
    schedule: str = "constant"  # or "cosine" (warm-up, then cosine decay)
    mixed_precision: bool = True  # bf16 autocast on CUDA; ignored on the CPU
    max_minutes: float | None = None  # a time budget: the schedule follows it, then stop

"""What a model sees (`InputSpec`), and the few facts about views that go with it; no torch here."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

MIN_VIEWS = 3  # a background (the per-pixel median of a car's views) needs at least this many
SETS = ("auto", "always", "never")  # how views named <car>_<NN> are grouped (Predictor(sets=...), --sets)
# A photo that differs from its set's median background over more than this
# share of the frame is not in the set's studio. Measured at the multiview
# frame: real turntable views differ over at most 27% (the car and its
# shadow); photos of unrelated scenes over 40-70%.
STUDIO_DIFFERING = 0.45
# ... and a photo that differs from it over less than this share is (nearly)
# the same photo as the others: their median shows the car, not the studio.
# Real turntable views differ over at least 3.4% (carvana-512, 270 cars) and
# 7.1% (the 40 test cars at 1918x1280); copies of one photo over 0%.
STUDIO_SAME = 0.01
CHANNELS = {"rgb": 3, "median_diff": 3, "mean_diff": 3}


class NotEnoughViews(ValueError):
    """A background needs at least MIN_VIEWS photos of the same car."""


class Box(NamedTuple):
    """A crop box in frame pixels: left, top, right, bottom (exclusive)."""

    left: int
    top: int
    right: int
    bottom: int


@dataclass(frozen=True)
class InputSpec:
    """What a model sees. Sizes are (width, height).

    `frame` is the size at which photos are compared with their background
    (and cropped, for the seed); `size` is the network's input size.
    """

    channels: tuple[str, ...] = ("rgb", "median_diff")
    size: tuple[int, int] = (100, 100)
    frame: tuple[int, int] | None = None
    crop: bool = False
    crop_fuzz: float = 0.15
    crop_margin: float = 0.03

    def __post_init__(self):
        unknown = set(self.channels) - set(CHANNELS)
        if unknown:
            raise ValueError(f"unknown input channels {sorted(unknown)}; known: {sorted(CHANNELS)}")
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "size", tuple(self.size))
        object.__setattr__(self, "frame", tuple(self.frame or self.size))

    @property
    def in_channels(self) -> int:
        return sum(CHANNELS[c] for c in self.channels)

    @property
    def needs_views(self) -> bool:
        return any(c.endswith("_diff") for c in self.channels) or self.crop

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> InputSpec:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

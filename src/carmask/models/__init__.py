"""Model registry, the normalising wrapper and safe checkpoints.

A checkpoint is a plain dict of tensors, numbers and strings, loaded with
`weights_only=True`: a model file handed in by a user never runs code.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from carmask.models.seed import SeedCNN
from carmask.models.unet import UNet
from carmask.views import MIN_VIEWS, InputSpec, NotEnoughViews

ARCHITECTURES = {"seed": SeedCNN, "unet": UNet}
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
FORMAT = "carmask-checkpoint-1"
# Shipped models in order of preference, for sets of views and for single photos.
MULTIVIEW_DEFAULTS = ("multiview", "seed")
SINGLE_DEFAULTS = ("rgb",)


class Segmenter(nn.Module):
    """Normalise uint8-range input with the training set's statistics, then
    run the network. Input N x C x H x W in [0, 255]; output logits N x 1 x H x W."""

    def __init__(self, arch: str, spec: InputSpec, arch_kwargs: dict | None = None,
                 mean: list[float] | None = None, std: list[float] | None = None):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
        self.arch, self.spec, self.arch_kwargs = arch, spec, dict(arch_kwargs or {})
        channels = spec.in_channels
        self.register_buffer("mean", torch.tensor(mean or [127.5] * channels).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std or [64.0] * channels).view(1, -1, 1, 1))
        self.net = ARCHITECTURES[arch](in_channels=channels, **self.arch_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.to(self.mean.dtype) - self.mean) / self.std)


def save(model: Segmenter, path, meta: dict | None = None) -> None:
    """Write a checkpoint atomically (model card facts go in `meta`)."""
    from carmask.io import atomic_write
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "arch": model.arch, "arch_kwargs": model.arch_kwargs,
               "spec": model.spec.to_dict(), "state_dict": state, "meta": dict(meta or {})}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def resolve(name_or_path) -> Path:
    """A shipped model's name (`seed`, `multiview`, `rgb`) or a checkpoint path."""
    path = Path(name_or_path)
    if path.suffix == "" and not path.exists():
        path = WEIGHTS_DIR / f"{name_or_path}.pt"
        if not path.exists():
            raise FileNotFoundError(f"no shipped model named {name_or_path!r}; "
                                    f"shipped: {', '.join(shipped()) or 'none'}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    return path


def default_for(views: int) -> str:
    """The shipped model for a photo that comes with `views` views of its car
    (counting itself): the best multi-view model for a set, else the best
    single-photo model."""
    available = shipped()
    preference = MULTIVIEW_DEFAULTS + SINGLE_DEFAULTS if views >= MIN_VIEWS else SINGLE_DEFAULTS
    for name in preference:
        if name in available:
            return name
    raise NotEnoughViews(f"no shipped single-photo model: give a set of at least {MIN_VIEWS} "
                         f"views of the car (named <car>_<NN>.jpg), or name a model")


def shipped() -> list[str]:
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))


def load(name_or_path, map_location="cpu") -> tuple[Segmenter, dict]:
    """Load a checkpoint safely; returns the model (eval mode) and its meta."""
    path = resolve(name_or_path)
    if path.suffix.lower() == ".onnx":  # an export: run by onnxruntime (carmask[onnx])
        from carmask.onnx_export import OnnxSegmenter
        model = OnnxSegmenter(path)
        return model, model.meta
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle errors, truncation, a non-checkpoint file
        raise ValueError(f"{path}: not a loadable carmask checkpoint ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a carmask checkpoint")
    model = Segmenter(payload["arch"], InputSpec.from_dict(payload["spec"]), payload["arch_kwargs"])
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload.get("meta", {})

"""Model registry, the shipped models by name and tier, the normalising wrapper
and safe checkpoints.

Shipped models are named `<kind>-<tier>`: kind `multiview` (a set of at least
3 views of one car) or `rgb` (any photo), tier `accurate` (the best dice,
slow on a CPU) or `fast` (small, for CPU batch work); `seed` is the write-up's
CNN. A kind alone (`multiview`) means its most accurate tier shipped; a tier
alone (`fast`) means that tier for each photo's kind. With no name, every
photo gets a model of its kind (`default_for`): on a GPU of the most accurate
tier shipped; on the CPU of the fast tier where one is shipped (`tiers_for`).

A checkpoint is a plain dict of tensors, numbers and strings, loaded with
`weights_only=True`: a model file handed in by a user never runs code. Its
architecture is checked against bounds and against the shapes of its weights
on the meta device before anything is allocated. Weights may be stored in
half precision (`save(..., half=True)`); they are computed in float32.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from carmask.files import atomic_write
from carmask.inputs.spec import MIN_VIEWS, InputSpec, NotEnoughViews
from carmask.models.seed import SeedCNN
from carmask.models.unet import UNet

ARCHITECTURES = {"seed": SeedCNN, "unet": UNet}
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
CATALOG = WEIGHTS_DIR / "catalog.json"  # measured figures of the shipped models (`carmask models`)
FORMAT = "carmask-checkpoint-1"
KINDS = ("multiview", "rgb")  # for a set of views, in order of preference
TIERS = ("accurate", "fast")  # most accurate first
# Bounds on what a checkpoint may ask for, checked before anything is built.
ARCH_LIMITS = {"seed": {}, "unet": {"width": (1, 256), "depth": (1, 7)}}
MAX_PARAMETERS = 100_000_000
MAX_INPUT_SIDE, MAX_FRAME_SIDE = 4096, 8192


class Segmenter(nn.Module):
    """Normalise uint8-range input with the training set's statistics, then
    run the network. Input N x C x H x W in [0, 255]; output logits N x 1 x H x W."""

    def __init__(
        self,
        arch: str,
        spec: InputSpec,
        arch_kwargs: dict | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ):
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

    def for_inference(self, device: torch.device) -> Segmenter:
        """For inference only (the predictor's runner): batch norms folded into
        their convolutions; channels last on the CPU too, where the U-Net takes
        40% less time."""
        return fold_batch_norms(self).to(device).to(memory_format=torch.channels_last)

    def compiled(self, mode: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
        """`torch.compile`d for one input shape (`mode` "reduce-overhead": CUDA graphs)."""
        return torch.compile(self, mode=mode, dynamic=False)


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Each BatchNorm2d that follows a Conv2d in a Sequential folded into the
    convolution (inference only: the same outputs to rounding, 10-15% less time)."""
    for block in model.modules():
        if isinstance(block, nn.Sequential):
            for i in range(len(block) - 1):
                if isinstance(block[i], nn.Conv2d) and isinstance(block[i + 1], nn.BatchNorm2d):
                    block[i], block[i + 1] = fuse_conv_bn_eval(block[i], block[i + 1]), nn.Identity()
    return model


# -- names --------------------------------------------------------------------------------------


def shipped() -> list[str]:
    """Names of the shipped models (files in weights/)."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))


def split_name(name: str) -> tuple[str, str | None]:
    """(kind, tier) of a shipped name: `multiview-fast` -> (multiview, fast); `seed` -> (seed, None)."""
    kind, _, tier = name.rpartition("-")
    return (kind, tier) if kind and tier in TIERS else (name, None)


def tiers_for(device="cpu") -> tuple[str, ...]:
    """The tiers in the order that the defaults take them on `device`: on a
    GPU the most accurate first; on the CPU the fast one first, since an
    accurate network works at 512x512, tens of times slower there (about 0.6
    photos/s on a 2-core CPU; the fast tier with its edge refiner 21:
    docs/RESULTS.md)."""
    return TIERS if torch.device(device).type != "cpu" else TIERS[::-1]


def default_for(views: int, tier: str | None = None, device="cpu") -> str:
    """The shipped model for a photo that comes with `views` views of its car
    (counting itself): of `tier`, or else of the first tier shipped in the
    order of `tiers_for(device)`; within a tier the multi-view model for a set
    of at least MIN_VIEWS views, the single-photo model otherwise."""
    if tier is not None and tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; tiers: {', '.join(TIERS)}")
    available = shipped()
    kinds = KINDS if views >= MIN_VIEWS else ("rgb",)
    for each in (tier,) if tier else tiers_for(device):
        for kind in kinds:
            if f"{kind}-{each}" in available:
                return f"{kind}-{each}"
    which = f"{tier} " if tier else ""
    if views >= MIN_VIEWS:
        raise ValueError(f"no {which}model is shipped; shipped: {', '.join(available) or 'none'}")
    raise NotEnoughViews(
        f"no shipped {which}single-photo model: give a set of at least {MIN_VIEWS} "
        f"views of the car (named <car>_<NN>.jpg), or name a model"
    )


def resolve(name_or_path) -> Path:
    """The file of a shipped model's name (`multiview-fast`), of a kind's most
    accurate tier shipped (`multiview`), or a checkpoint path."""
    path = Path(name_or_path)
    if path.suffix == "" and not path.exists():
        name = str(name_or_path)
        if name in TIERS:
            raise ValueError(
                f"{name!r} is a tier: it picks a model for each photo's kind "
                f"(Predictor(model={name!r}) or --model {name}); name a model to load one"
            )
        if name in KINDS:
            name = next((f"{name}-{t}" for t in TIERS if f"{name}-{t}" in shipped()), name)
        path = WEIGHTS_DIR / f"{name}.pt"
        if not path.exists():
            raise FileNotFoundError(
                f"no shipped model named {name_or_path!r}; shipped: {', '.join(shipped()) or 'none'}"
            )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    return path


def check(model) -> None:
    """Raise FileNotFoundError or ValueError, with a sentence, unless `model`
    (None, a tier, a name or a path) can be used: for CLIs, before any work."""
    if model is None:
        return
    if str(model) in TIERS:
        default_for(MIN_VIEWS, tier=str(model))  # at least one model of that tier is shipped
    else:
        load(model)


def stands_for(model, device="cpu") -> list[str]:
    """The shipped models that a predictor's `model` runs on `device`: for
    None or a tier, the ones for sets and for single photos (`default_for`); a
    shipped name's (or kind's) own; none for a checkpoint, or a name that is
    not there."""
    if model is None or str(model) in TIERS:
        names = []
        for views in (MIN_VIEWS, 1):
            try:
                names.append(default_for(views, None if model is None else str(model), device))
            except ValueError:  # none shipped for that case
                pass
        return names
    try:
        path = resolve(model)
    except (FileNotFoundError, ValueError):
        return []
    return [path.stem] if path.parent == WEIGHTS_DIR else []


def catalog() -> dict[str, dict]:
    """Measured figures of the shipped models: name -> {recipe, dice_512, cpu_s_per_photo, ...}."""
    return json.loads(CATALOG.read_text()) if CATALOG.exists() else {}


# -- checkpoints --------------------------------------------------------------------------------


def save(model: Segmenter, path, meta: dict | None = None, half: bool = False) -> None:
    """Write a checkpoint atomically (model card facts go in `meta`). `half`:
    store the weights in float16 (half the bytes; `load` computes in float32),
    except the normalisation statistics and any tensor float16 cannot hold."""
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if half and value.is_floating_point() and key not in ("mean", "std"):
            small = value.half()
            if torch.isfinite(small).all() or not torch.isfinite(value).all():
                value = small
        state[key] = value
    payload = {
        "format": FORMAT,
        "arch": model.arch,
        "arch_kwargs": model.arch_kwargs,
        "spec": model.spec.to_dict(),
        "state_dict": state,
        "meta": dict(meta or {}),
        "dtype": "float16" if half else "float32",
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load(name_or_path, map_location="cpu") -> tuple[Segmenter, dict]:
    """Load a checkpoint safely; returns the model (eval mode, float32) and its meta."""
    path = resolve(name_or_path)
    if _is_onnx(path):  # an export: run by onnxruntime (carmask[onnx])
        from carmask.onnx_runtime import OnnxSegmenter

        model = OnnxSegmenter(path)
        return model, model.meta
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # pickle errors, truncation, a non-checkpoint file: torch's words run to paragraphs
        raise ValueError(
            f"{path}: not a loadable carmask checkpoint (not a PyTorch file of plain tensors, or a damaged one)"
        ) from None
    arch, spec, arch_kwargs, state = _checked(path, payload)
    model = Segmenter(arch, spec, arch_kwargs)
    model.load_state_dict(state)  # float16 weights are copied into float32 parameters
    return model.eval(), payload.get("meta", {})


def _is_onnx(path: Path) -> bool:
    """An ONNX export, by its name or, renamed, by its first byte (an ONNX
    model opens with its IR version, field 1; a PyTorch checkpoint is a zip)."""
    if path.suffix.lower() == ".onnx":
        return True
    try:
        with open(path, "rb") as file:
            return file.read(1) == b"\x08"
    except OSError:
        return False


# A checklist of an untrusted file, each check its own sentence: one place to read them all.
def _checked(path: Path, payload) -> tuple[str, InputSpec, dict, dict]:  # noqa: C901
    """A checkpoint's architecture, input spec and weights, checked against the
    bounds above and against each other before anything real is allocated."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a carmask checkpoint")
    missing = [key for key in ("arch", "spec", "state_dict") if key not in payload]
    if missing:
        raise ValueError(f"{path}: an incomplete carmask checkpoint (no {', '.join(missing)})")
    arch, arch_kwargs, state = payload["arch"], payload.get("arch_kwargs") or {}, payload["state_dict"]
    if arch not in ARCHITECTURES:
        raise ValueError(f"{path}: unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    limits = ARCH_LIMITS[arch]
    if not isinstance(arch_kwargs, dict) or set(arch_kwargs) - set(limits):
        raise ValueError(
            f"{path}: {arch} takes {', '.join(limits) or 'no options'}, the checkpoint gives {arch_kwargs!r}"
        )
    for key, value in arch_kwargs.items():
        low, high = limits[key]
        if not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{path}: {arch} {key}={value!r} is outside {low}..{high}")
    try:
        spec = InputSpec.from_dict(payload["spec"])
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: unreadable input spec ({exc})") from None
    for label, size, most in (("input", spec.size, MAX_INPUT_SIDE), ("frame", spec.frame, MAX_FRAME_SIDE)):
        if len(size) != 2 or not all(isinstance(s, int) and 1 <= s <= most for s in size):
            raise ValueError(f"{path}: {label} size {size} is outside 1..{most} pixels a side")
    with torch.device("meta"):  # shapes only: nothing is allocated
        skeleton = Segmenter(arch, spec, arch_kwargs)
    parameters = sum(p.numel() for p in skeleton.parameters())
    if parameters > MAX_PARAMETERS:
        raise ValueError(
            f"{path}: {arch} {arch_kwargs} has {parameters:,} parameters, over the limit of {MAX_PARAMETERS:,}"
        )
    want = {key: tuple(value.shape) for key, value in skeleton.state_dict().items()}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: its weights are not a dict of tensors")
    got = {key: tuple(value.shape) for key, value in state.items()}
    problems = [f"no {key}" for key in want if key not in got]
    problems += [f"unexpected {key}" for key in got if key not in want]
    problems += [
        f"{key} is {'x'.join(map(str, got[key]))}, expected {'x'.join(map(str, want[key]))}"
        for key in want
        if key in got and got[key] != want[key]
    ]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        network = f"{arch} {arch_kwargs}" if arch_kwargs else arch
        raise ValueError(
            f"{path}: its weights do not fit a {network} on {spec.in_channels} "
            f"input channels ({'; '.join(problems[:3])}{more})"
        )
    return arch, spec, arch_kwargs, state

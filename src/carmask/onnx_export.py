"""ONNX export of a carmask checkpoint, and an onnxruntime CPU path for it.

`export` writes a self-describing .onnx file: the graph takes `input`
(N x C x H x W float32 in 0..255, normalisation included) and gives `logits`
(N x 1 x H x W), with the batch, height and width axes dynamic; the model's
InputSpec and the checkpoint's meta are in its metadata_props, as JSON.

`OnnxSegmenter` runs such a file with onnxruntime on the CPU and quacks like
a `Segmenter` for the predictor (`.spec`, `model(batch) -> logits`), so
`Predictor(model="model.onnx")` takes the same path from photos to masks.

Needs the optional extra: pip install "carmask[onnx]" (onnx to export,
onnxruntime to run).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from carmask.views import InputSpec

FORMAT = "carmask-onnx-1"
INPUT, OUTPUT = "input", "logits"
# Metadata keys in the .onnx file.
KEY_FORMAT, KEY_SPEC, KEY_META = "carmask.format", "carmask.spec", "carmask.meta"
KEY_ARCH, KEY_ARCH_KWARGS = "carmask.arch", "carmask.arch_kwargs"


class MissingExtra(ImportError, ValueError):
    """onnx or onnxruntime is not installed (a ValueError too, so that callers
    that report a bad model file report this the same way)."""


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise MissingExtra(f"ONNX support needs the {module} package: "
                          f'pip install "carmask[onnx]"') from None


def _trace_size(size: tuple[int, int]) -> tuple[int, int]:
    """A (height, width) to trace at, from the spec's (width, height).

    The U-Net resizes a skip's partner only when their sizes differ, and the
    tracer records the branch it saw. Sizes one less than a multiple of 64
    differ at every level (of up to 6 downsamplings), so the traced graph
    keeps the resize, with its target size read from the input: any input
    size then works (the resize is an exact copy where sizes agree).
    """
    width, height = size
    return tuple(max(64 * round((s + 1) / 64), 64) - 1 for s in (height, width))


def export(model_name_or_path, out_path, opset: int = 17) -> Path:
    """Export a shipped model or checkpoint to ONNX at `out_path` (written atomically)."""
    from carmask import models
    from carmask.io import atomic_write

    onnx = _need("onnx")
    if Path(str(model_name_or_path)).suffix.lower() == ".onnx":
        raise ValueError(f"{model_name_or_path}: already an ONNX model")
    model, meta = models.load(model_name_or_path)
    model = model.float().eval()
    height, width = _trace_size(model.spec.size)
    example = torch.rand(2, model.spec.in_channels, height, width) * 255
    axes = {0: "batch", 2: "height", 3: "width"}

    def write(tmp: Path) -> None:
        import warnings
        with warnings.catch_warnings():
            # The legacy exporter's deprecation note, the U-Net's shape test
            # (handled by the trace size above) and a note on padding slices.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Constant folding")
            with torch.no_grad():
                torch.onnx.export(model, (example,), str(tmp), input_names=[INPUT],
                                  output_names=[OUTPUT], dynamic_axes={INPUT: axes, OUTPUT: axes},
                                  opset_version=opset, do_constant_folding=True, dynamo=False)
        proto = onnx.load(str(tmp))
        props = {KEY_FORMAT: FORMAT, KEY_SPEC: json.dumps(model.spec.to_dict()),
                 KEY_META: json.dumps(meta, default=str), KEY_ARCH: model.arch,
                 KEY_ARCH_KWARGS: json.dumps(model.arch_kwargs)}
        del proto.metadata_props[:]
        for key, value in props.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "carmask"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))

    out_path = Path(out_path)
    atomic_write(out_path, write)
    return out_path


def read_metadata(path) -> dict[str, str]:
    """The carmask metadata of an exported file (raw strings), via onnxruntime."""
    return OnnxSegmenter(path, threads=1).metadata


class OnnxSegmenter:
    """An exported model run by onnxruntime on the CPU, shaped like a `Segmenter`:
    `.spec`, `.meta`, `model(x) -> logits` (torch tensors in and out, on the
    input's device), and `.to()`/`.eval()` that return the model itself."""

    def __init__(self, path, threads: int | None = None):
        ort = _need("onnxruntime")
        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # not an ONNX file, truncated, unsupported ops
            raise ValueError(f"{self.path}: not a loadable ONNX model ({exc})") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        if self.metadata.get(KEY_FORMAT) != FORMAT or KEY_SPEC not in self.metadata:
            raise ValueError(f"{self.path}: not a carmask ONNX export (no {KEY_SPEC} metadata)")
        self.spec = InputSpec.from_dict(json.loads(self.metadata[KEY_SPEC]))
        self.meta = json.loads(self.metadata.get(KEY_META, "{}"))
        self.arch = self.metadata.get(KEY_ARCH, "onnx")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (logits,) = self.session.run([OUTPUT], {INPUT: array})
        return torch.from_numpy(logits).to(x.device)

    def to(self, *args, **kwargs) -> "OnnxSegmenter":
        return self

    def eval(self) -> "OnnxSegmenter":
        return self

    def __repr__(self) -> str:
        return f"OnnxSegmenter({str(self.path)!r}, arch={self.arch!r})"

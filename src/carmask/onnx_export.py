"""ONNX export of a carmask checkpoint.

`export` writes a self-describing .onnx file: the graph takes `input`
(N x C x H x W float32 in 0..255, normalisation included) and gives `logits`
(N x 1 x H x W), with the batch, height and width axes dynamic; the model's
InputSpec and the checkpoint's meta are in its metadata_props, as JSON.
`onnx_runtime.OnnxSegmenter` runs such a file (`--model model.onnx`).

Needs the optional extra: pip install "carmask[onnx]" (onnx to export,
onnxruntime to run).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from carmask import models
from carmask.files import atomic_write
from carmask.onnx_runtime import FORMAT, INPUT, KEY_ARCH, KEY_ARCH_KWARGS, KEY_FORMAT, KEY_META, KEY_SPEC, OUTPUT, need


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
    onnx = need("onnx")
    if Path(str(model_name_or_path)).suffix.lower() == ".onnx":
        raise ValueError(f"{model_name_or_path}: already an ONNX model")
    model, meta = models.load(model_name_or_path)
    model = model.float().eval()
    height, width = _trace_size(model.spec.size)
    example = torch.rand(2, model.spec.in_channels, height, width) * 255
    axes = {0: "batch", 2: "height", 3: "width"}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            # The legacy exporter's deprecation note, the U-Net's shape test
            # (handled by the trace size above) and a note on padding slices.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Constant folding")
            with torch.no_grad():
                torch.onnx.export(
                    model,
                    (example,),
                    str(tmp),
                    input_names=[INPUT],
                    output_names=[OUTPUT],
                    dynamic_axes={INPUT: axes, OUTPUT: axes},
                    opset_version=opset,
                    do_constant_folding=True,
                    dynamo=False,
                )
        proto = onnx.load(str(tmp))
        props = {
            KEY_FORMAT: FORMAT,
            KEY_SPEC: json.dumps(model.spec.to_dict()),
            KEY_META: json.dumps(meta, default=str),
            KEY_ARCH: model.arch,
            KEY_ARCH_KWARGS: json.dumps(model.arch_kwargs),
        }
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

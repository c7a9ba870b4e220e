"""Run a carmask ONNX export with onnxruntime on the CPU, shaped like a `Segmenter`.

`OnnxSegmenter` meets the predictor's `Segmenter` protocol
(`carmask.predictor.runner`: `.spec`, `model(batch) -> logits`,
`for_inference`, `compiled`), so `Predictor(model="model.onnx")` takes the
same path from photos to masks. The file format (metadata keys, input and output
names) is defined here and written by `onnx_export`. Needs the optional extra:
pip install "carmask[onnx]".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from carmask.inputs.spec import InputSpec

FORMAT = "carmask-onnx-1"
INPUT, OUTPUT = "input", "logits"
# Metadata keys in the .onnx file.
KEY_FORMAT, KEY_SPEC, KEY_META = "carmask.format", "carmask.spec", "carmask.meta"
KEY_ARCH, KEY_ARCH_KWARGS = "carmask.arch", "carmask.arch_kwargs"


class MissingExtra(ImportError, ValueError):
    """onnx or onnxruntime is not installed (a ValueError too, so that callers
    that report a bad model file report this the same way)."""


def need(module: str):
    """Import an optional module of the onnx extra, or say how to install it."""
    try:
        return __import__(module)
    except ImportError:
        raise MissingExtra(f'ONNX support needs the {module} package: pip install "carmask[onnx]"') from None


class OnnxSegmenter:
    """An exported model run by onnxruntime on the CPU, a `Segmenter` for the
    predictor: `.spec`, `.meta`, `model(x) -> logits` (torch tensors in and
    out, on the input's device)."""

    def __init__(self, path, threads: int | None = None):
        ort = need("onnxruntime")
        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
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

    def for_inference(self, device: torch.device) -> OnnxSegmenter:
        """Itself: onnxruntime runs on the CPU whatever `device`, and hands the
        logits back on the input's device; the export is already for inference."""
        return self

    def compiled(self, mode: str | None) -> OnnxSegmenter:
        """Itself: onnxruntime optimises the graph when the session is made."""
        return self

    def __repr__(self) -> str:
        return f"OnnxSegmenter({str(self.path)!r}, arch={self.arch!r})"

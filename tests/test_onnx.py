"""ONNX export and the onnxruntime CPU path: the exported file describes itself,
and `Predictor(model="x.onnx")` gives the masks the PyTorch path gives."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from carmask import models  # noqa: E402
from carmask.cli import main  # noqa: E402
from carmask.io import find_photos, read_photo  # noqa: E402
from carmask.kaggle import group_by_car  # noqa: E402
from carmask.onnx_export import export  # noqa: E402
from carmask.onnx_runtime import FORMAT, OnnxSegmenter  # noqa: E402
from carmask.predict import Predictor  # noqa: E402
from carmask.predictor.runner import Segmenter  # noqa: E402

PROB_TOLERANCE = 1e-3
MASK_AGREEMENT = 0.999


@pytest.fixture(scope="module")
def exported(seed_model, rgb_model, tmp_path_factory):
    """name -> (checkpoint, exported .onnx) for both fixture models."""
    folder = tmp_path_factory.mktemp("onnx")
    return {
        name: (ckpt, export(ckpt, folder / f"{name}.onnx")) for name, ckpt in (("seed", seed_model), ("rgb", rgb_model))
    }


def assert_same_masks(onnx_probs, torch_probs):
    onnx_probs, torch_probs = np.asarray(onnx_probs), np.asarray(torch_probs)
    assert onnx_probs.shape == torch_probs.shape
    assert np.abs(onnx_probs - torch_probs).max() <= PROB_TOLERANCE
    agreement = ((onnx_probs > 0.5) == (torch_probs > 0.5)).mean()
    assert agreement >= MASK_AGREEMENT, agreement


@pytest.mark.parametrize("name", ["seed", "rgb"])
def test_export_describes_itself(exported, name):
    ckpt, path = exported[name]
    model, meta = models.load(ckpt)
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["carmask.format"] == FORMAT
    assert json.loads(props["carmask.spec"]) == model.spec.to_dict()
    assert json.loads(props["carmask.meta"]) == json.loads(json.dumps(meta, default=str))
    assert props["carmask.arch"] == model.arch
    assert model.spec.needs_views == (name == "seed")

    (graph_input,), (graph_output,) = proto.graph.input, proto.graph.output
    assert (graph_input.name, graph_output.name) == ("input", "logits")
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims == ["batch", model.spec.in_channels, "height", "width"]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    runner = OnnxSegmenter(path, threads=1)
    assert runner.spec == model.spec
    assert runner.meta == json.loads(props["carmask.meta"])
    # the predictor's Segmenter protocol, met as it is: no torch Module's methods pretended
    assert isinstance(runner, Segmenter) and isinstance(model, Segmenter)
    assert runner.for_inference(torch.device("cpu")) is runner and runner.compiled(None) is runner
    assert not hasattr(runner, "to") and not hasattr(runner, "eval")


@pytest.mark.parametrize("name", ["seed", "rgb"])
def test_any_batch_and_input_size(exported, name):
    ckpt, path = exported[name]
    model, _ = models.load(ckpt)
    runner = OnnxSegmenter(path)
    width, height = model.spec.size
    generator = torch.Generator().manual_seed(0)
    for batch, h, w in [(1, height, width), (3, height, width), (2, 37, 53), (1, 2 * height + 1, width - 5)]:
        x = torch.rand(batch, model.spec.in_channels, h, w, generator=generator) * 255
        with torch.no_grad():
            expected = model(x)
        got = runner(x)
        assert isinstance(got, torch.Tensor) and got.shape == (batch, 1, h, w)
        assert torch.allclose(torch.sigmoid(got), torch.sigmoid(expected), atol=1e-5)


def test_seed_sets_of_views_match_pytorch(exported, synth_data):
    ckpt, path = exported["seed"]
    sets = group_by_car(find_photos([synth_data / "test"]))
    assert [len(s.paths) for s in sets] == [16]
    # Batches of 5 over 16 views: the exported graph sees batches of 5 and of 1.
    via_onnx = list(Predictor(path, device="cpu", batch_size=5).predict_sets(sets))
    via_torch = list(Predictor(ckpt, device="cpu").predict_sets(sets))
    assert [p.path for p in via_onnx] == [p.path for p in via_torch]
    assert not any(p.error for p in via_onnx + via_torch)
    assert_same_masks([p.probs for p in via_onnx], [p.probs for p in via_torch])
    assert via_onnx[0].probs.shape == (128, 192)
    assert 0.02 < np.mean([p.mask.mean() for p in via_onnx]) < 0.9  # a car, not all or nothing


def test_rgb_single_photos_match_pytorch(exported, synth_data):
    ckpt, path = exported["rgb"]
    via_onnx, via_torch = Predictor(path, device="cpu"), Predictor(ckpt, device="cpu")
    assert isinstance(via_onnx.model_for(1), OnnxSegmenter)
    photos = sorted((synth_data / "test").glob("*.jpg"))[:3] + sorted((synth_data / "train").glob("*.jpg"))[:2]
    for photo_path in photos:
        photo = read_photo(photo_path)
        assert_same_masks(via_onnx.predict_photo(photo), via_torch.predict_photo(photo))
    big = read_photo(photos[0])
    assert_same_masks(
        via_onnx.predict_photo(big, output_size=(384, 256)), via_torch.predict_photo(big, output_size=(384, 256))
    )


def test_cli_export_and_predict_with_the_export(seed_model, synth_data, tmp_path):
    out = tmp_path / "seed.onnx"
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(seed_model), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "wrote" in result.output
    before = out.stat().st_mtime_ns

    result = runner.invoke(main, ["export", str(seed_model), "-o", str(out)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert out.stat().st_mtime_ns == before
    result = runner.invoke(main, ["export", str(seed_model), "-o", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output

    result = runner.invoke(main, ["export", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2 and "no such model file" in result.output
    result = runner.invoke(main, ["export", str(out), "-o", str(tmp_path / "again.onnx")])
    assert result.exit_code == 2 and "already an ONNX model" in result.output

    csv = tmp_path / "submission.csv"
    result = runner.invoke(main, ["predict", str(synth_data / "test"), "-o", str(csv), "--model", str(out)])
    assert result.exit_code == 0, result.output
    assert len(csv.read_text().splitlines()) == 1 + 16


def test_other_onnx_files_are_refused(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])],
        "plain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1])],
    )
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph), str(plain))
    with pytest.raises(ValueError, match="not a carmask ONNX export"):
        models.load(plain)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        models.load(junk)


def test_an_export_under_another_name_still_loads(exported, tmp_path):
    """`carmask export -o model.bin`, or a renamed export: known by its first byte."""
    _, path = exported["rgb"]
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(path.read_bytes())
    model, _ = models.load(renamed)
    assert isinstance(model, OnnxSegmenter)

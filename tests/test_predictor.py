"""The predictor's parts behind the facade: the runner's one protocol for
torch and ONNX models, and `close()` / `with` for every engine."""

import threading

import numpy as np
import pytest
import torch

from carmask import models
from carmask.predict import Predictor
from carmask.predictor.runner import Runner, Segmenter


def photo(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (64, 96, 3), dtype=np.uint8)


def decoding_threads(before=frozenset()):
    return {t for t in threading.enumerate() if t.name.startswith("carmask-decode") and t not in before}


def test_a_predictor_is_a_context_that_ends_its_decoding_threads():
    before = decoding_threads()
    with Predictor("rgb-fast", device="cpu", workers=2) as predictor:
        first = predictor.predict_photo(photo())
        assert decoding_threads(before)
    assert not decoding_threads(before)
    again = predictor.predict_photo(photo())  # usable after close: new threads, the same answer
    assert np.array_equal(first, again)
    predictor.close()
    predictor.close()  # twice is harmless
    assert not decoding_threads(before)


def test_a_predictor_never_used_closes():
    before = decoding_threads()
    with Predictor("rgb-fast", device="cpu") as predictor:
        assert predictor.model_for(1)
    assert not decoding_threads(before)


def test_the_ray_engine_is_a_context_too():
    pytest.importorskip("ray")
    from carmask import ray_engine

    assert ray_engine.RayPredictor.__enter__ and ray_engine.RayPredictor.__exit__
    closed = []
    engine = object.__new__(ray_engine.RayPredictor)  # no Ray started: close() alone is what `with` calls
    engine.close = lambda: closed.append(True)
    with engine as entered:
        assert entered is engine
    assert closed == [True]


def test_torch_models_meet_the_runners_protocol():
    model, _ = models.load("rgb-fast")
    assert isinstance(model, Segmenter)
    runner = Runner("rgb-fast", torch.device("cpu"), batch_size=4)
    ready = runner.model_for(1)
    assert ready is runner.load("rgb-fast") and not any(isinstance(m, torch.nn.BatchNorm2d) for m in ready.modules())
    x = torch.from_numpy(photo()).permute(2, 0, 1)[None].repeat(3, 1, 1, 1)
    probs = runner.probabilities(ready, x)
    assert probs.shape == (3, 64, 96) and probs.dtype == torch.float32
    assert torch.equal(probs[0], probs[2])  # each photo alone in its call, whatever the batch


def test_tta_averages_the_mirrored_prediction():
    plain = Runner("rgb-fast", torch.device("cpu"), batch_size=1)
    tta = Runner("rgb-fast", torch.device("cpu"), batch_size=1, tta=True)
    x = torch.from_numpy(photo(1)).permute(2, 0, 1)[None]
    once, mirrored = plain.probabilities(plain.model_for(1), x), plain.probabilities(plain.model_for(1), x.flip(-1))
    assert torch.allclose(tta.probabilities(tta.model_for(1), x), (once + mirrored.flip(-1)) / 2, atol=1e-6)

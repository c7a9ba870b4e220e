"""The predictor's parts behind the facade: the runner's one protocol for
torch and ONNX models."""

import numpy as np
import torch

from carmask import models
from carmask.predictor.runner import Runner, Segmenter


def photo(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (64, 96, 3), dtype=np.uint8)


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

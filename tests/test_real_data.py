"""The shipped models on real Carvana photos of a car held out from their
training (the 15% split by car of every recipe). Skipped without ../shared/data."""

import pytest

from carmask.data import discover, split_by_car
from carmask.evaluate import evaluate
from carmask.predict import Predictor


@pytest.fixture
def held_out_car(real_data):
    _, val_cars = split_by_car(list(discover(real_data / "carvana-512")), 0.15, 0)
    return real_data / "carvana-512", val_cars[0]


@pytest.mark.parametrize("model", ["multiview-fast", "rgb-fast", "seed"])
def test_shipped_models_score_on_a_held_out_car(held_out_car, model):
    data, car = held_out_car
    scores = evaluate(Predictor(model, device="cpu"), data, cars=[car])
    assert len(scores.dice) == 16 and not scores.skipped
    assert scores.mean > {"seed": 0.95}.get(model, 0.985)

"""Recipes in one place: `carmask train --recipe` and the benchmarks build the
same configurations, and every shipped model was trained by the recipe its
card names."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from helpers import run_cli

from carmask import models
from carmask.recipes import RECIPES, recipe

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def trained_configs(monkeypatch):
    """The TrainConfig of each `carmask train` call, which then trains nothing."""
    seen = []

    def fake_train(data_dir, run_dir, config, **kwargs):
        seen.append(config)
        return Path(run_dir) / "best.pt"

    monkeypatch.setattr("carmask.train.train", fake_train)
    return seen


@pytest.mark.parametrize("name", ["multiview-fast", "rgb-fast", "seed", "multiview-accurate"])
def test_cli_and_ablation_build_the_same_configuration(name, synth_data, tmp_path, trained_configs):
    result = run_cli("train", synth_data, "-o", tmp_path / "run", "--recipe", name, "--max-minutes", "3")
    assert result.exit_code == 0, result.output
    ablation = benchmark("ablation")
    assert trained_configs == [ablation.configs([name], 3, {})[name]]
    assert trained_configs[0].max_minutes == 3


def test_flags_change_single_fields(synth_data, tmp_path, trained_configs):
    run_cli(
        "train",
        synth_data,
        "-o",
        tmp_path / "run",
        "--recipe",
        "multiview-fast",
        "--lr",
        "1e-3",
        "--weight-decay",
        "0",
        "--width",
        "16",
        "--no-augment",
        "--size",
        "64x64",
        "--batch-size",
        "8",
    )
    (config,) = trained_configs
    base = RECIPES["multiview-fast"]
    assert (config.lr, config.weight_decay, config.augment, config.batch_size) == (1e-3, 0.0, False, 8)
    assert config.arch_kwargs == {"width": 16, "depth": 4}
    assert config.spec.size == (64, 64) and config.spec.frame == base.spec.frame == (256, 256)
    assert (config.dice_weight, config.edge_weight, config.schedule) == (1.0, 2.0, "cosine")
    assert base.lr == 3e-3 and base.arch_kwargs == {"width": 8, "depth": 4}  # the table is untouched


def test_recipe_overrides():
    assert recipe("rgb-fast", size=(256, 256)).spec.frame == (256, 256)  # no separate frame: it follows
    assert recipe("rgb-fast", size=(256, 256), frame=(512, 512)).spec.frame == (512, 512)
    assert recipe("seed", max_minutes=0).max_minutes == 0
    assert recipe("seed", arch="unet", width=8).arch_kwargs == {"width": 8}
    with pytest.raises(ValueError, match="unknown recipe 'nope'; recipes: seed"):
        recipe("nope")
    with pytest.raises(ValueError, match="unknown recipe fields: colour"):
        recipe("seed", colour="red")
    with pytest.raises(ValueError, match="width: not an option of the seed architecture"):
        recipe("seed", width=8)


def test_an_unknown_recipe_is_a_usage_error(synth_data, tmp_path):
    result = run_cli("train", synth_data, "-o", tmp_path / "run", "--recipe", "nope")
    assert result.exit_code == 2 and "unknown recipe 'nope'; recipes: seed, rgb-fast" in result.output


@pytest.mark.parametrize("name", models.shipped())
def test_each_shipped_model_was_trained_by_the_recipe_its_card_names(name):
    entry = models.catalog()[name]
    config = recipe(entry["recipe"])
    card = (models.WEIGHTS_DIR / f"{name}.md").read_text()
    assert f"--recipe {entry['recipe']}" in card
    payload = torch.load(models.resolve(name), weights_only=True)
    assert (payload["arch"], payload["arch_kwargs"]) == (config.arch, config.arch_kwargs)
    assert payload["spec"] == config.spec.to_dict()
    trained = payload["meta"]["config"]
    for key in (
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "val_fraction",
        "seed",
        "dice_weight",
        "edge_weight",
        "augment",
        "schedule",
        "max_minutes",
    ):
        assert trained[key] == getattr(config, key), key


def test_the_help_names_every_recipe():
    text = " ".join(run_cli("train", "--help").output.split())
    assert all(name in text for name in RECIPES)


# Every recipe's resolved settings, written down before the settings moved into one table
# (issue 20, part 5): a recipe trains what it trained. A new recipe adds its entry.
PINNED = json.loads((Path(__file__).with_name("recipe_settings.json")).read_text())


@pytest.mark.parametrize("name", sorted(PINNED))
def test_each_recipes_resolved_settings_are_pinned(name):
    settings = json.loads(json.dumps(dataclasses.asdict(recipe(name))))  # tuples as lists, as pinned
    assert settings == PINNED[name]


@pytest.mark.slow
def test_the_table_imports_no_training_loop():
    import subprocess
    import sys

    code = "import sys, carmask.recipes; print(sorted(m for m in sys.modules if m.startswith('carmask.train')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["['carmask.train_config']"]

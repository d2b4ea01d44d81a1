"""train.cuda_graphs: the same training, replayed as CUDA graphs on a GPU and ignored on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TINY
from perceiver_cli.data.sources import load_for_recipe
from perceiver_cli.engine.graphs import GraphedTraining, training_forward
from perceiver_cli.engine.train import start_run
from perceiver_cli.recipe import load_recipe


def train(runs_dir: Path, device: str, overrides: list[str]):
    recipe, path = load_recipe(None, TINY + [f"train.runs_dir={runs_dir}", "model.dropout=0.0"] + overrides)
    trainer = start_run(recipe, path, load_for_recipe(recipe.data), quiet=True, device=device)
    result = trainer.fit()
    return result, trainer.model.state_dict()


def test_cuda_graphs_are_ignored_on_cpu(tmp_path):
    recipe, _ = load_recipe(None, ["train.cuda_graphs=true"])
    model = torch.nn.Linear(3, 2)
    assert training_forward(model, recipe.train, torch.device("cpu"), bf16=False) is model
    _, plain = train(tmp_path / "plain", "cpu", ["train.epochs=1", "train.cuda_graphs=false"])
    _, graphed = train(tmp_path / "graphed", "cpu", ["train.epochs=1", "train.cuda_graphs=true"])
    for name, value in plain.items():
        assert torch.equal(value, graphed[name]), name


def test_graphed_training_runs_evaluation_and_no_grad_forwards_eagerly():
    model = torch.nn.Linear(3, 2)
    graphed = GraphedTraining(model, bf16=False)
    x = torch.randn(4, 3)
    with torch.no_grad():
        assert torch.equal(graphed(x), model(x))
    assert graphed._graphed is None  # nothing was captured off the GPU


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_graphed_training_matches_eager_training_on_cuda(tmp_path):
    # digits' 1,293 training images in batches of 64: 20 graphed steps and a short eager one per epoch
    settings = ["train.epochs=2", "train.precision=fp32", "optim.name=adamw"]
    eager, eager_weights = train(tmp_path / "eager", "cuda", settings + ["train.cuda_graphs=false"])
    graphed, graphed_weights = train(tmp_path / "graphed", "cuda", settings + ["train.cuda_graphs=true"])
    for name, value in eager_weights.items():
        torch.testing.assert_close(graphed_weights[name], value, atol=2e-4, rtol=1e-3, msg=name)
    assert graphed.rows[-1]["train_loss"] == pytest.approx(eager.rows[-1]["train_loss"], rel=1e-3)


@needs_cuda
def test_graphed_bf16_training_learns_like_eager(tmp_path):
    settings = ["train.epochs=3", "train.precision=bf16"]
    eager, _ = train(tmp_path / "eager", "cuda", settings + ["train.cuda_graphs=false"])
    graphed, _ = train(tmp_path / "graphed", "cuda", settings + ["train.cuda_graphs=true"])
    assert graphed.rows[-1]["val_loss"] == pytest.approx(eager.rows[-1]["val_loss"], abs=0.05)

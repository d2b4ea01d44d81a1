"""The Python API a timm or Hugging Face user reaches for: list_recipes, create_model, train(recipe,
**overrides) returning the run, and load(...).predict on paths, PIL images, arrays and tensors alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import perceiver_cli
from perceiver_cli.errors import UserError


def test_list_recipes_and_create_model():
    names = perceiver_cli.list_recipes()
    assert "digits" in names and "cifar10_cpu" in names and names == sorted(names)
    model = perceiver_cli.create_model("digits")
    assert isinstance(model, torch.nn.Module) and sum(p.numel() for p in model.parameters()) == 196_918
    wider = perceiver_cli.create_model("digits", latent_dim=128)  # a last part only one key has
    assert sum(p.numel() for p in wider.parameters()) > 196_918


def test_train_returns_the_run_and_overrides_are_keywords(workdir):
    result = perceiver_cli.train("digits", epochs=1, train__batch_size=64, name="from_python")
    assert result.run_dir.name == "from_python" and (workdir / result.run_dir / "checkpoints" / "best.pt").is_file()
    assert len(result.rows) == 1
    with pytest.raises(UserError, match="name the key whole"):
        perceiver_cli.train("digits", colour=3)


def test_predict_takes_paths_pil_images_arrays_and_tensors_alike(digits_run, workdir):
    rng = np.random.default_rng(0)
    pixels = (rng.random((8, 8)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(workdir / "digit.png")
    model = perceiver_cli.load(digits_run)
    as_tensor = torch.from_numpy(pixels)[None].float() / 255  # C H W in [0, 1], as torchvision gives it
    rows = model.predict(["digit.png", Image.fromarray(pixels), pixels, as_tensor, np.stack([pixels, pixels])])
    assert [r["input"] for r in rows] == ["digit.png", "<input 1>", "<input 2>", "<input 3>", "<input 4>[0]", "<input 4>[1]"]
    assert len({r["class"] for r in rows}) == 1
    assert max(r["probability"] for r in rows) - min(r["probability"] for r in rows) < 1e-6
    skipped = []
    assert model.predict([np.zeros(5)], skipped=skipped) == [] and "not an image" in skipped[0]["reason"]

"""Perceiver IO outputs (issue 18): the decoder against today's query head and against itself
(chunks, resolutions), masks that move with their images, Dice by hand, short segmentation and
masked-image runs that learn, fine-tuning from a masked-image run, the new keys' bad inputs, and
checkpoints from before tasks."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY, set_args

from perceiver_cli.data.augment import augment_images
from perceiver_cli.data.prepared import PreparedDataset, Split, channel_stats
from perceiver_cli.engine.train import start_run
from perceiver_cli.errors import UserError
from perceiver_cli.model import build_model
from perceiver_cli.model.decoder import QueryDecoder
from perceiver_cli.model.perceiver_io import DensePerceiver
from perceiver_cli.recipe import (
    AugmentConfig,
    ModelConfig,
    load_recipe,
    recipe_from_dict,
)
from perceiver_cli.runs import checkpoint
from perceiver_cli.runs.trained import build_trained_model
from perceiver_cli.tasks.masks import confusion_counts, dice_and_iou, mean_foreground
from perceiver_cli.tasks.segment import SegmentTask

IMAGE = {"kind": "image", "shape": [8, 8, 3]}
ENCODER = ("adapter.", "latents", "cross_blocks.", "latent_blocks.")


def small(**kwargs) -> ModelConfig:
    base = {"num_latents": 8, "latent_dim": 32, "latent_blocks": 1, "latent_heads": 4, "num_bands": 3,
            "max_freq": 6.0, "patch_size": 2}
    return ModelConfig(**{**base, **kwargs})


# --- the decoder -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cross_heads", [1, 2])
def test_a_decoder_with_one_query_is_todays_classification_query_head(cross_heads):
    torch.manual_seed(0)
    config = small(output="query", cross_heads=cross_heads, activation="geglu")
    model = build_model(config, IMAGE, 5).eval()
    dim = config.latent_dim
    decoder = QueryDecoder(dim, dim, cross_heads, dim // cross_heads, config.widening_factor, config.activation,
                           dropout=0.0).eval()
    decoder.load_state_dict({**{f"attention.{k}": v for k, v in model.decoder.state_dict().items()},
                             **{f"mlp.{k}": v for k, v in model.decoder_mlp.state_dict().items()}})
    latents = torch.randn(3, 8, dim)
    with torch.no_grad():
        head = model._pool(latents)
        ours = decoder(model.query, latents)[:, 0]
        # the head as written before the decoder existed: q + attention(q, latents), then + MLP
        query = model.query.expand(3, -1, -1)
        query = query + model.decoder(query, model.decoder.keys_values(latents, None))[0]
        before = (query + model.decoder_mlp(query))[:, 0]
    assert ours.shape == (3, dim)
    assert torch.equal(ours, head) and torch.equal(ours, before)


def dense(chunk=None, query_pixels=True, stride=1, shape=(8, 8, 3), classes=3, context=0) -> DensePerceiver:
    torch.manual_seed(0)
    spec = {"kind": "image", "shape": list(shape)}
    return DensePerceiver(small(decoder_chunk=chunk, decoder_dim=16, decoder_heads=2), spec, classes, stride,
                          query_pixels, context)


@pytest.mark.parametrize("chunk", [7, 1])
def test_chunked_decoding_equals_unchunked_outputs_and_gradients(chunk):
    whole, chunked = dense(None), dense(chunk)
    chunked.load_state_dict(whole.state_dict())
    x = torch.randn(2, 8, 8, 3)
    whole.eval(), chunked.eval()
    with torch.no_grad():
        torch.testing.assert_close(chunked(x), whole(x), atol=1e-6, rtol=0)

    whole.train(), chunked.train()
    grads = []
    for model in (whole, chunked):
        model.zero_grad()
        (model(x).square().mean()).backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


def test_a_dense_decoder_answers_at_any_resolution():
    model = dense(query_pixels=False, shape=(16, 16, 1), classes=4).eval()
    x = torch.randn(2, 16, 16, 1)
    with torch.no_grad():
        native, larger = model(x), model(x, output_shape=(32, 32))
    assert native.shape == (2, 16, 16, 4) and larger.shape == (2, 32, 32, 4)
    # positions span [-1, 1] at any size: the four corners are the same positions, so the same logits
    for r, c in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        torch.testing.assert_close(larger[:, r, c], native[:, r, c], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(larger[:, 1, 1], native[:, 1, 1])  # inner cells are new positions

    strided = dense(stride=2, shape=(16, 16, 1), classes=4)
    assert strided(x, output_shape=(32, 32)).shape == (2, 32, 32, 4)
    with pytest.raises(UserError, match=r"task\.output_stride=2"):
        strided(x, output_shape=(15, 16))


# --- augmentation moves masks with their images -----------------------------------------------------

def masked_batch(seed=0, n=16, size=12) -> torch.Tensor:
    """uint8 B H W 2: channel 0 an image that is mask * 100, channel 1 the mask (labels 0, 1, 2)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        r, c = rng.integers(0, size - 5, 2)
        mask[i, r:r + 5, c:c + 4] = 1
        r, c = rng.integers(0, size - 3, 2)
        mask[i, r:r + 3, c:c + 3] = 2
    mask = torch.from_numpy(mask)
    return torch.stack([mask * 100, mask], dim=-1)


def test_crops_and_flips_move_the_mask_with_its_image():
    batch = masked_batch()
    config = AugmentConfig(random_crop_padding=2, horizontal_flip=True, padding_mode="zeros")
    out = augment_images(batch, config, torch.Generator().manual_seed(0), label_channels=1)
    assert out.dtype == torch.uint8 and out.shape == batch.shape
    assert not torch.equal(out, batch)  # the batch did move
    assert torch.equal(out[..., 0], out[..., 1] * 100)


def test_an_affine_keeps_labels_whole_and_with_their_image():
    batch = masked_batch()
    config = AugmentConfig(affine_degrees=30, affine_scale=0.2, affine_translate=0.1, padding_mode="zeros")
    out = augment_images(batch, config, torch.Generator().manual_seed(0), label_channels=1)
    image, mask = out[..., 0], out[..., 1]
    assert not torch.equal(mask, batch[..., 1])
    assert set(mask.unique().tolist()) <= {0, 1, 2}  # nearest: never a label between two others
    # the bilinear image, thresholded half-way between the labels' intensities, says the same label
    thresholded = ((image.float() + 50) // 100).clamp(0, 2).to(mask.dtype)
    assert (thresholded == mask).float().mean() > 0.9


# --- metrics ----------------------------------------------------------------------------------------

def test_dice_and_iou_equal_a_hand_computation():
    truth = torch.tensor([[0, 1, 1], [2, 2, 0]])
    predicted = torch.tensor([[0, 1, 2], [2, 0, 0]])
    # per class |P∩T|, |P|, |T|: 0: 2, 3, 2   1: 1, 1, 2   2: 1, 2, 2   3 (absent in both): 0, 0, 0
    counts = confusion_counts(predicted, truth, 4)
    assert counts.tolist() == [[2, 1, 1, 0], [3, 1, 2, 0], [2, 2, 2, 0]]
    dice, iou = dice_and_iou(counts)
    assert dice[:3] == pytest.approx([4 / 5, 2 / 3, 2 / 4]) and iou[:3] == pytest.approx([2 / 3, 1 / 2, 1 / 3])
    assert math.isnan(dice[3]) and math.isnan(iou[3])
    assert mean_foreground(dice) == pytest.approx((2 / 3 + 1 / 2) / 2)  # background and the absent class left out
    assert mean_foreground(iou) == pytest.approx((1 / 2 + 1 / 3) / 2)

    # the same through the task's sums (as validation adds them over batches): one sample, logits = its prediction
    recipe, _ = load_recipe(None, ["task.name=segment"])
    task = SegmentTask(recipe, SimpleNamespace(classes=["bg", "a", "b", "c"]), transform=None)
    logits = torch.nn.functional.one_hot(predicted, 4).float()[None] * 10
    sums = task.eval_sums(logits, (truth[None],))
    assert sums.shape == (task.eval_size(),)
    row = task.eval_row(sums, 1)
    assert row["val_dice"] == pytest.approx(7 / 12) and row["val_accuracy"] == pytest.approx(4 / 6)


# --- short runs -------------------------------------------------------------------------------------

# a user's own recipe: it leaves train.best_metric to the task
RECIPE = """\
model: {num_latents: 16, latent_dim: 32, latent_blocks: 1, latent_heads: 2, num_bands: 4, max_freq: 8.0, patch_size: 2}
optim: {lr: 0.003}
train: {batch_size: 32, eval_batch_size: 64, device: cpu, seed: 0}
"""


def tiny_recipe(folder: Path, overrides: list[str]):
    path = folder / "tiny.yaml"
    path.write_text(RECIPE)
    return load_recipe(path, [f"train.runs_dir={folder / 'runs'}"] + overrides)


def boxes(n: int, rng, size: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images with a bright box (label 1) and a white square (label 2)."""
    x = rng.integers(0, 60, (n, size, size, 1)).astype(np.uint8)
    y = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        r, c, s = *rng.integers(0, size - 5, 2), rng.integers(3, 6)
        y[i, r:r + s, c:c + s] = 1
        x[i, r:r + s, c:c + s, 0] += 150
        r, c = rng.integers(0, size - 3, 2)
        y[i, r:r + 3, c:c + 3] = 2
        x[i, r:r + 3, c:c + 3, 0] = 255
    return x, y


def in_memory(name: str, classes: list[str], train, val, target: dict | None = None) -> PreparedDataset:
    spec = {"kind": "image", "shape": list(train[0].shape[1:])}
    ds = PreparedDataset(name, classes, spec, {"train": Split(*train), "val": Split(*val)},
                         normalization=channel_stats(train[0]))
    if target is not None:
        ds.target = target
    return ds


def test_a_short_segmentation_run_learns(tmp_path):
    rng = np.random.default_rng(0)
    train, val = boxes(160, rng), boxes(48, rng)
    ds = in_memory("boxes", ["background", "box", "square"], train, val, {"kind": "mask", "shape": [12, 12]})
    recipe, path = tiny_recipe(tmp_path, ["task.name=segment", "train.epochs=8", "data.augment.horizontal_flip=true"])
    result = start_run(recipe, path, ds, quiet=True, device="cpu").fit()

    assert all("val_dice" in row for row in result.rows)
    # predicting background everywhere scores Dice 0 on both foreground classes
    assert result.rows[-1]["val_dice"] > 0.5, result.rows
    assert result.best["metric"] == "val_dice"
    best = checkpoint.load(result.run_dir / "checkpoints" / "best.pt")
    assert best["best"]["metric"] == "val_dice" and best["target"] == {"kind": "mask", "shape": [12, 12]}


def gradients(n: int, rng, size: int = 8, channels: int = 1) -> np.ndarray:
    """Linear ramps at random angles in [0, 90) degrees with random offsets: every patch's pixels follow
    from the image's direction, which the visible patches show."""
    angle = rng.uniform(0, math.pi / 2, n)
    rows, cols = np.mgrid[0:size, 0:size] / (size - 1)
    ramp = np.cos(angle)[:, None, None] * cols + np.sin(angle)[:, None, None] * rows  # 0 .. ~1.4
    pixels = 20 + 150 * ramp + rng.uniform(0, 30, (n, 1, 1))
    return np.repeat(pixels[..., None], channels, -1).clip(0, 255).astype(np.uint8)


MAE_SETTINGS = ["task.name=masked_image", "train.epochs=3", "task.mask_ratio=0.75"]


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
    """A short masked-image run on ramps (one label for all: none is used)."""
    folder = tmp_path_factory.mktemp("mae")
    rng = np.random.default_rng(1)
    train, val = gradients(192, rng), gradients(64, rng)
    ds = in_memory("ramps", ["image"], (train, np.zeros(len(train), np.int64)), (val, np.zeros(len(val), np.int64)))
    recipe, path = tiny_recipe(folder, MAE_SETTINGS)
    return folder, start_run(recipe, path, ds, quiet=True, device="cpu").fit()


def test_a_short_masked_image_run_beats_the_patch_mean_baseline(mae_run):
    _, result = mae_run
    last = result.rows[-1]
    assert "val_baseline" in last and last["val_baseline"] > 0.5  # normalised patches: predicting the mean costs
    assert last["val_loss"] < 0.8 * last["val_baseline"], result.rows
    assert result.best["metric"] == "val_loss"


def test_fine_tuning_starts_from_the_masked_image_runs_encoder(mae_run):
    folder, mae = mae_run
    rng = np.random.default_rng(2)
    x = gradients(96, rng)
    y = (x[:, 0, -1, 0] > x[:, -1, 0, 0]).astype(np.int64)  # steeper along rows or along columns
    ds = in_memory("ramps", ["rows", "columns"], (x[:64], y[:64]), (x[64:], y[64:]))
    recipe, path = tiny_recipe(folder, ["train.epochs=1", f"train.init={mae.run_dir}", "train.name=finetune"])
    trainer = start_run(recipe, path, ds, quiet=True, device="cpu")

    pretrained = checkpoint.load(mae.run_dir / "checkpoints" / "best.pt")["model"]
    own = trainer.model.state_dict()
    encoder = [name for name in own if name.startswith(ENCODER)]
    assert encoder and all(name in pretrained for name in encoder)
    for name in encoder:
        assert torch.equal(own[name].cpu(), pretrained[name]), name
    assert not any(name.startswith(("classifier", "head_norm")) for name in pretrained)
    shared = [name for name in own if name in pretrained]
    log = (trainer.run_dir / "train.log").read_text()
    assert f"init: {len(shared)} tensors from {mae.run_dir}" in log, log
    trainer.fit()  # and it trains on from there
    assert (trainer.run_dir / "checkpoints" / "best.pt").is_file()


def test_a_segmentation_run_starts_from_the_masked_image_runs_encoder(mae_run):
    folder, mae = mae_run
    x, y = boxes(48, np.random.default_rng(3), size=8)
    ds = in_memory("boxes", ["background", "box", "square"], (x[:32], y[:32]), (x[32:], y[32:]),
                   {"kind": "mask", "shape": [8, 8]})
    recipe, path = tiny_recipe(folder, ["task.name=segment", "train.epochs=1", f"train.init={mae.run_dir}",
                                        "train.name=segment-init"])
    trainer = start_run(recipe, path, ds, quiet=True, device="cpu")
    pretrained = checkpoint.load(mae.run_dir / "checkpoints" / "best.pt")["model"]
    own = trainer.model.state_dict()
    for name in (n for n in own if n.startswith(ENCODER)):
        assert torch.equal(own[name].cpu(), pretrained[name]), name
    trainer.fit()


def test_masked_image_modelling_with_one_value_per_patch_trains_or_says_why(tmp_path):
    rng = np.random.default_rng(4)
    x = gradients(48, rng)
    ds = in_memory("ramps", ["image"], (x[:32], np.zeros(32, np.int64)), (x[32:], np.zeros(16, np.int64)))
    recipe, path = tiny_recipe(tmp_path, ["task.name=masked_image", "train.epochs=1", "model.patch_size=1"])
    try:
        result = start_run(recipe, path, ds, quiet=True, device="cpu").fit()
    except UserError as exc:  # refusing up front is as good, when it names what to change
        assert "diverged" not in str(exc) and ("patch_size" in str(exc) or "norm_pix_loss" in str(exc)), exc
    else:
        assert math.isfinite(result.rows[-1]["val_loss"]), result.rows


# --- bad inputs through the CLI ---------------------------------------------------------------------

def one_line_error(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def no_run_directory(workdir: Path) -> bool:
    """runs/ (which start_run may leave, empty) holds no run."""
    return not any((workdir / "runs").glob("*"))


def test_init_from_another_architecture_is_one_line_and_leaves_no_run(cli, digits_run):
    before = sorted(p.name for p in Path("runs").iterdir())
    result = cli("train", *set_args(TINY + ["model.latent_dim=16", f"train.init={digits_run}"]), "--name", "other")
    line = one_line_error(result)
    assert f"train.init={digits_run}" in line and "architecture" in line, line
    assert sorted(p.name for p in Path("runs").iterdir()) == before


def test_init_from_a_run_with_more_latent_blocks_is_one_line(cli, digits_run):
    state = checkpoint.load(digits_run / "checkpoints" / "best.pt")
    state["config"]["model"]["latent_blocks"] = 2
    state["model"] = build_trained_model(recipe_from_dict(state["config"]), state).state_dict()
    checkpoint.save(state, Path("deeper.pt"))
    result = cli("train", *set_args(TINY + ["train.init=deeper.pt"]), "--name", "shallower")
    line = one_line_error(result)
    assert "train.init=deeper.pt" in line, line
    assert not Path("runs/shallower").exists()


@pytest.mark.parametrize("ratio", ["1.0", "0"])
def test_a_mask_ratio_outside_0_1_is_one_line(cli, workdir, ratio):
    result = cli("train", *set_args(TINY + ["task.name=masked_image", "train.best_metric=val_loss",
                                            f"task.mask_ratio={ratio}"]))
    assert "task.mask_ratio" in one_line_error(result)
    assert no_run_directory(workdir)


def test_segmenting_a_dataset_without_masks_is_one_line(cli, workdir):
    line = one_line_error(cli("train", *set_args(TINY + ["task.name=segment"])))
    assert "task.name=segment" in line and "masks" in line, line
    assert no_run_directory(workdir)


# --- checkpoints from before tasks ------------------------------------------------------------------

NEW_CONFIG_KEYS = {"model": ("decoder_dim", "decoder_heads", "decoder_chunk"), "train": ("init",)}


def test_checkpoints_from_before_tasks_still_evaluate_and_resume(cli, digits_run):
    for name in ("best.pt", "last.pt"):  # as written before tasks: no target, no task section, no new keys
        path = digits_run / "checkpoints" / name
        state = checkpoint.load(path)
        state.pop("target", None)
        state["config"].pop("task", None)
        for section, keys in NEW_CONFIG_KEYS.items():
            for key in keys:
                state["config"][section].pop(key, None)
        checkpoint.save(state, path)

    result = cli("eval", digits_run)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output.lower()

    result = cli("train", "--resume", digits_run, "--set", "train.epochs=3")
    assert result.exit_code == 0, result.output
    state = checkpoint.load(digits_run / "checkpoints" / "last.pt")
    assert state["epoch"] == 3 and [row["epoch"] for row in state["metrics"]] == [1, 2, 3]
    # the continued run's checkpoint says what it is, as new ones do
    assert state["target"] == {"kind": "class"} and state["config"]["task"]["name"] == "classify"


def fake_masks(shares=(0.9, 0.09, 0.01), count=10, size=10):
    """A dataset-like object whose train masks hold the three classes in these pixel shares."""
    y = np.zeros((count, size, size), np.uint8).reshape(-1)
    edges = np.cumsum([round(share * y.size) for share in shares])
    y[edges[0]:edges[1]], y[edges[1]:] = 1, 2
    train = Split(x=np.zeros((count, size, size, 1), np.uint8), y=y.reshape(count, size, size))
    return SimpleNamespace(classes=["background", "a", "b"], split=lambda name: train)


@pytest.mark.parametrize("dice_weight, class_weight_power", [(0.0, 0.0), (1.0, 0.0), (1.0, 0.5)])
def test_the_segmentation_loss_of_a_batch_is_the_mean_of_its_parts(dice_weight, class_weight_power):
    """What lets N ranks (or grad_accum micro-batches) train exactly as one batch: the loss of a batch is
    the mean of its halves' losses. A Dice pooled over the batch would not be (it was, at first), nor
    would a cross-entropy weighted per class normalised by each batch's own weights."""
    recipe = SimpleNamespace(task=SimpleNamespace(dice_weight=dice_weight, class_weight_power=class_weight_power),
                             optim=SimpleNamespace(label_smoothing=0.0))
    task = SegmentTask(recipe, fake_masks(), transform=None)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, 5, 3, generator=generator)
    y = torch.randint(0, 3, (6, 5, 5), generator=generator)
    y[:3] = 0  # the first half holds background only: a pooled Dice weighs the halves unevenly
    whole, _ = task.loss(logits, (y,))
    halves = [task.loss(logits[part], (y[part],))[0] for part in (slice(0, 2), slice(2, 6))]
    torch.testing.assert_close(whole, (2 * halves[0] + 4 * halves[1]) / 6, rtol=1e-6, atol=1e-7)


def test_largest_components_keeps_one_region_per_class_and_clears_only_that_class():
    from perceiver_cli.tasks.masks import largest_components

    mask = np.zeros((1, 8, 8), np.uint8)
    mask[0, 0:3, 0:3] = 1  # the bone: 9 pixels
    mask[0, 6:8, 6:8] = 1  # a stray island of it: 4 pixels
    mask[0, 5, 0] = mask[0, 7, 2] = 2  # two regions of a class left alone
    cleaned = largest_components(mask, [1])
    assert (cleaned[0, 0:3, 0:3] == 1).all() and (cleaned[0, 6:8, 6:8] == 0).all()
    assert cleaned[0, 5, 0] == cleaned[0, 7, 2] == 2 and (mask[0, 6:8, 6:8] == 1).all()  # the input is untouched
    mask[0, 3, 3] = 1  # diagonal neighbours are one region (8-connected)
    assert largest_components(mask, [1])[0, 3, 3] == 1


def test_class_weights_favour_rare_labels_and_average_one_over_the_training_pixels():
    recipe = SimpleNamespace(task=SimpleNamespace(dice_weight=0.0, class_weight_power=0.5),
                             optim=SimpleNamespace(label_smoothing=0.0))
    weights = SegmentTask(recipe, fake_masks(), transform=None).class_weights("cpu")
    shares = torch.tensor([0.9, 0.09, 0.01])
    torch.testing.assert_close((weights * shares).sum(), torch.tensor(1.0))
    torch.testing.assert_close(weights[2] / weights[0], torch.tensor(90.0).sqrt())  # (0.9 / 0.01) ** 0.5
    recipe.task.class_weight_power = 0.0  # off: the plain cross-entropy
    assert SegmentTask(recipe, fake_masks(), transform=None).class_weights("cpu") is None


def test_query_context_gives_each_query_its_block_and_the_pixels_around_it():
    model = dense(stride=2, shape=(8, 8, 1), classes=3, context=1)  # 4 x 4 windows around 2 x 2 blocks
    x = torch.arange(64.0).reshape(1, 8, 8, 1)
    windows = model.query_windows(x)  # B Q (C w w)
    assert windows.shape == (1, 16, 16)
    inner = windows[0, 1 * 4 + 1].reshape(4, 4)  # the block at rows 2-3, columns 2-3
    torch.testing.assert_close(inner, x[0, 1:5, 1:5, 0])
    corner = windows[0, 0].reshape(4, 4)  # replicated at the image's edge
    torch.testing.assert_close(corner[0], torch.tensor([0.0, 0.0, 1.0, 2.0]))
    assert model(x).shape == (1, 8, 8, 3) and model(x, output_shape=(16, 16)).shape == (1, 16, 16, 3)
    plain = dense(stride=2, shape=(8, 8, 1), classes=3)  # no context: the block alone, as checkpoints before it
    torch.testing.assert_close(plain.query_windows(x)[0, 5], x[0, 2:4, 2:4, 0].reshape(-1))

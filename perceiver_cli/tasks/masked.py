"""Masked image modelling (MAE, He et al. 2022) with a Perceiver: no labels needed.

Per sample a random task.mask_ratio of the patches is hidden; the encoder reads only the visible
ones (the speed of masked autoencoding: a quarter of the tokens at 0.75), and one decoder query
per hidden patch reconstructs its pixels. The loss is the mean squared error on the hidden
patches only, against each patch's pixels normalised by its own mean and std (task.norm_pix_loss,
MAE's better targets). The baseline a model has to beat predicts each hidden patch's own mean
(in normalised targets: zero, a loss of 1).
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from pydantic import Field
from torch import nn

from ..data.augment import augment_images
from ..errors import UserError
from ..model.perceiver_io import MaskedPerceiver
from .base import Task, TaskConfig


class MaskedImageConfig(TaskConfig):
    name: Literal["masked_image"] = Field("masked_image", description="masked image modelling")
    mask_ratio: float = Field(0.75, gt=0, lt=1, description="masked_image: share of the patches hidden from the encoder and reconstructed (MAE: 0.75)")
    norm_pix_loss: bool = Field(True, description="masked_image: reconstruct each patch's pixels normalised by its own mean and std (MAE's better targets)")


class FixedMask(nn.Module):
    """A MaskedPerceiver with each sample's visible and hidden patches drawn once (seeded), as the
    task draws them per batch: forward(x) then is the training forward, B H W C -> B Q (p p C)."""

    def __init__(self, model: MaskedPerceiver, input_spec: dict, mask_ratio: float, batch: int):
        super().__init__()
        height, width, _ = input_spec["shape"]
        patches = (height // model.patch) * (width // model.patch)
        visible = max(1, patches - round(patches * mask_ratio))
        order = torch.rand(batch, patches, generator=torch.Generator().manual_seed(0)).argsort(1)
        self.model = model
        self.register_buffer("visible", order[:, :visible].sort(1).values, persistent=False)
        self.register_buffer("hidden", order[:, visible:].sort(1).values, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.visible, self.hidden)


class MaskedImageTask(Task):
    name = "masked_image"
    summary = "masked image modelling without labels (MAE), to pretrain an encoder for train.init"
    Config = MaskedImageConfig
    bench_dense = True
    columns = (("val_baseline", "baseline", "{:.4f}"),)  # the loss of predicting each patch's own mean
    best_metrics = {"val_loss": "min"}
    headline, headline_percent = "loss", False  # the hidden patches' reconstruction loss
    metric = None

    def bench_module(self, model, batch):
        return FixedMask(model, self.dataset.input_spec, self.recipe.task.mask_ratio, batch)

    def check_exportable(self, target, format):
        raise UserError(f"{target}: a masked_image run is an encoder to fine-tune (train.init), not a model to deploy; "
                        f"export the classifier or segmentation run trained from it")

    @classmethod
    def check_dataset(cls, dataset):
        """Any images will do: the labels, of whatever kind, are not read."""

    def __init__(self, recipe, dataset, transform):
        super().__init__(recipe, dataset, transform)
        height, width, _ = dataset.input_spec["shape"]
        p = recipe.model.patch_size
        self.patches = (height // p) * (width // p) if height % p == 0 and width % p == 0 else 1
        self.visible = max(1, self.patches - round(self.patches * recipe.task.mask_ratio))

    def build_model(self):
        model = MaskedPerceiver(self.recipe.model, self.dataset.input_spec)
        channels = self.dataset.input_spec["shape"][2]
        if self.recipe.task.norm_pix_loss and self.recipe.model.patch_size**2 * channels < 2:
            raise UserError(f"task.norm_pix_loss normalises each patch by its own mean and std, but a patch of "
                            f"model.patch_size={self.recipe.model.patch_size} holds one value: raise model.patch_size "
                            f"(e.g. 4) or set task.norm_pix_loss=false")
        if self.visible == self.patches:
            raise UserError(f"task.mask_ratio={self.recipe.task.mask_ratio} of {self.patches} patches hides none: "
                            f"raise it, or lower model.patch_size for more patches")
        return model

    def patch_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """B H W C -> B M (p p C): every patch's pixels, in the order the model's tokens have."""
        p = self.recipe.model.patch_size
        return rearrange(x, "b (h p1) (w p2) c -> b (h w) (p1 p2 c)", p1=p, p2=p)

    def split(self, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample, the patches with the smallest noise are visible: (visible B V, hidden B Q), sorted."""
        order = noise.argsort(dim=1)
        return order[:, : self.visible].sort(1).values, order[:, self.visible:].sort(1).values

    def targets(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        patches = self.patch_pixels(x)  # B M (p p C)
        target = torch.gather(patches, 1, hidden[..., None].expand(-1, -1, patches.shape[-1]))
        if self.recipe.task.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        return target

    def train_batch(self, stored, labels, generator):
        x = self.transform(augment_images(stored, self.recipe.data.augment, generator))
        noise = torch.rand(len(x), self.patches, generator=generator, device=generator.device).to(x.device)
        visible, hidden = self.split(noise)
        return (x, visible, hidden), (self.targets(x, hidden),)

    def eval_batch(self, stored, labels, index):
        """The same hidden patches for a sample in every epoch: its noise is seeded by its row."""
        x = self.transform(stored)
        seed = self.recipe.train.seed * 1_000_003
        noise = torch.stack([torch.rand(self.patches, generator=torch.Generator().manual_seed(seed + int(i)))
                             for i in index.tolist()]).to(x.device)
        visible, hidden = self.split(noise)
        return (x, visible, hidden), (self.targets(x, hidden),)

    def loss(self, predicted, target):
        (wanted,) = target
        loss = (predicted.float() - wanted).square().mean()
        return loss, torch.zeros((), device=loss.device)

    def eval_sums(self, predicted, target):
        (wanted,) = target
        per_sample = (predicted.float() - wanted).square().mean((1, 2))
        baseline = (wanted - wanted.mean(-1, keepdim=True)).square().mean((1, 2))  # each patch's own mean
        return torch.stack([per_sample.sum().double(), baseline.sum().double()])

    def eval_row(self, sums, count):
        loss, baseline = sums.tolist()
        return {"val_loss": loss / count, "val_baseline": baseline / count}

    def evaluate(self, context):
        from .masked_eval import evaluate_reconstruction

        return evaluate_reconstruction(self, context)

    @classmethod
    def show_evaluation(cls, report):
        from .masked_eval import show_evaluation

        return show_evaluation(report)

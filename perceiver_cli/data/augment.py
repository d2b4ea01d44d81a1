"""Batch augmentations that run on the tensors where they live (CPU or GPU); no DataLoader workers.

They work on the stored batch (uint8 images, B H W C) before it is turned into floats: a crop is
pure indexing, so it costs nothing but a gather.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F


def _shifted_index(size: int, shift: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Source index of every output position after shifting by `shift` (B,) in [-p, p], and
    whether it falls inside the image (for zero padding)."""
    index = torch.arange(size, device=shift.device)[None, :] + shift[:, None]  # B size
    inside = (index >= 0) & (index < size)
    if mode == "reflect":  # -1 -> 1, size -> size - 2 (no edge repeat, like numpy/torch 'reflect')
        index = index.abs()
        index = torch.where(index >= size, 2 * (size - 1) - index, index)
        inside = torch.ones_like(inside)
    return index.clamp(0, size - 1), inside


def random_crop(images: torch.Tensor, padding: int, mode: str, generator: torch.Generator) -> torch.Tensor:
    """Pad every side by `padding` and cut a random H x W window per sample (as a shift)."""
    b, h, w, _ = images.shape
    shifts = torch.randint(-padding, padding + 1, (2, b), generator=generator, device=generator.device).to(images.device)
    rows, rows_inside = _shifted_index(h, shifts[0], mode)  # B H
    cols, cols_inside = _shifted_index(w, shifts[1], mode)  # B W
    batch = torch.arange(b, device=images.device)[:, None, None]
    out = images[batch, rows[:, :, None], cols[:, None, :]]  # B H W C
    if mode == "zeros":
        out = out * (rows_inside[:, :, None] & cols_inside[:, None, :])[..., None].to(out.dtype)
    return out


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each sample left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device=generator.device).to(images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(2), images)


def random_affine(images: torch.Tensor, degrees: float, scale: float, translate: float, mode: str,
                  generator: torch.Generator, label_channels: int = 0) -> torch.Tensor:
    """Rotate by up to +-degrees, scale by a factor in [1 - scale, 1 + scale] and shift by up to
    +-translate of the image size, per sample, with bilinear resampling (sub-pixel shifts: on
    small images such as 8x8 digits a whole-pixel shift is already a large change). The last
    `label_channels` channels are label maps: moved by the same transform, nearest-neighbour (a
    label is never interpolated)."""
    b, h, w, _ = images.shape

    def uniform() -> torch.Tensor:  # B values in [-1, 1]
        return (torch.rand(b, generator=generator, device=generator.device) * 2 - 1).to(images.device)

    angle, factor = uniform() * math.radians(degrees), 1 + uniform() * scale
    shift_x, shift_y = uniform() * 2 * translate, uniform() * 2 * translate  # grid coordinates span 2
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack([torch.stack([cos, -sin, shift_x], -1), torch.stack([sin, cos, shift_y], -1)], 1)
    x = images.permute(0, 3, 1, 2).float()
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    padding = "reflection" if mode == "reflect" else "zeros"
    colours = x.shape[1] - label_channels
    out = F.grid_sample(x[:, :colours], grid, mode="bilinear", padding_mode=padding, align_corners=False)
    if label_channels:  # zeros padding brings in label 0, the background
        labels = F.grid_sample(x[:, colours:], grid, mode="nearest", padding_mode=padding, align_corners=False)
        out = torch.cat([out, labels], dim=1)
    out = out.permute(0, 2, 3, 1)
    return out.round_().clamp_(0, 255).to(images.dtype) if images.dtype == torch.uint8 else out.to(images.dtype)


def augment_images(images: torch.Tensor, config, generator: torch.Generator, label_channels: int = 0) -> torch.Tensor:
    """The recipe's image augmentations on a uint8 batch (B H W C). The last `label_channels`
    channels are per-pixel labels that move with the image (segmentation masks): crops and flips
    index every channel alike, and the affine resamples them nearest-neighbour."""
    if config.affine_degrees or config.affine_scale or config.affine_translate:
        images = random_affine(images, config.affine_degrees, config.affine_scale, config.affine_translate,
                               config.padding_mode, generator, label_channels)
    if config.random_crop_padding:
        images = random_crop(images, config.random_crop_padding, config.padding_mode, generator)
    if config.horizontal_flip:
        images = random_flip(images, generator)
    return images


# --- point clouds (B N 3+F float; the first 3 channels are xyz) -------------------------------------

AXES = {"x": 0, "y": 1, "z": 2}


def _uniform(shape, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return (torch.rand(shape, generator=generator, device=generator.device) * (high - low) + low).to(device)


def subsample_points(points: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """A random subset of `count` points per cloud (all of them when there are not more)."""
    b, n, _ = points.shape
    if count >= n:
        return points
    keep = torch.rand(b, n, generator=generator, device=generator.device).argsort(dim=1)[:, :count].to(points.device)
    return points.gather(1, keep[..., None].expand(-1, -1, points.shape[-1]))


def rotate_about(xyz: torch.Tensor, axis: str, generator: torch.Generator) -> torch.Tensor:
    """Rotate each cloud by a random angle about `axis` (the other two coordinates turn)."""
    angle = _uniform(xyz.shape[0], 0.0, 2 * torch.pi, generator, xyz.device)
    cos, sin = angle.cos()[:, None], angle.sin()[:, None]
    a, b = [i for i in range(3) if i != AXES[axis]]
    out = xyz.clone()
    out[..., a] = cos * xyz[..., a] - sin * xyz[..., b]
    out[..., b] = sin * xyz[..., a] + cos * xyz[..., b]
    return out


def drop_points(points: torch.Tensor, max_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Each cloud loses a random share in [0, max_fraction] of its points; they are replaced by
    copies of randomly chosen kept points, so the cloud keeps its size (and a batch its shape)."""
    b, n, c = points.shape
    fraction = _uniform((b, 1), 0.0, max_fraction, generator, points.device)
    dropped = torch.rand(b, n, generator=generator, device=generator.device).to(points.device) < fraction
    dropped[:, 0] = False  # every cloud keeps at least one point to copy
    # for each dropped point, a random kept point of the same cloud
    scores = torch.rand(b, n, generator=generator, device=generator.device).to(points.device).masked_fill(dropped, -1.0)
    donors = scores.argsort(dim=1, descending=True)  # kept points first, in random order
    kept = (~dropped).sum(1, keepdim=True)
    pick = donors.gather(1, (torch.arange(n, device=points.device)[None, :] % kept))
    source = torch.where(dropped, pick, torch.arange(n, device=points.device)[None, :])
    return points.gather(1, source[..., None].expand(-1, -1, c))


def augment_points(points: torch.Tensor, config, generator: torch.Generator) -> torch.Tensor:
    xyz, features = points[..., :3], points[..., 3:]
    if config.rotate:
        xyz = rotate_about(xyz, config.up_axis, generator)
    if config.point_scale is not None:
        low, high = config.point_scale
        xyz = xyz * _uniform(xyz.shape[:2] + (1,), low, high, generator, xyz.device)
    if config.translate:
        xyz = xyz + _uniform((xyz.shape[0], 1, 3), -config.translate, config.translate, generator, xyz.device)
    if config.jitter:
        noise = torch.randn(xyz.shape, generator=generator, device=generator.device).to(xyz.device) * config.jitter
        xyz = xyz + noise.clamp(-5 * config.jitter, 5 * config.jitter)
    points = torch.cat([xyz, features], dim=-1) if features.shape[-1] else xyz
    if config.point_dropout:
        points = drop_points(points, config.point_dropout, generator)
    return points


def mix(inputs: torch.Tensor, alpha: float, generator: torch.Generator):
    """Mixup (Zhang et al. 2018) on model inputs: (w * x + (1 - w) * x[partner], partner, w) with one
    w ~ Beta(alpha, alpha) per batch, drawn from `generator`; (inputs, None, 1.0) when alpha is 0."""
    if not alpha:
        return inputs, None, 1.0
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
    weight = float(np.random.default_rng(seed).beta(alpha, alpha))
    partner = torch.randperm(inputs.shape[0], generator=generator, device=generator.device).to(inputs.device)
    return weight * inputs + (1 - weight) * inputs[partner], partner, weight

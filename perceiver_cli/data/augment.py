"""Batch augmentations that run on the tensors where they live (CPU or GPU); no DataLoader workers.

They work on the stored batch (uint8 images, B H W C) before it is turned into floats: a crop is
pure indexing, so it costs nothing but a gather.
"""

import torch


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


def augment_images(images: torch.Tensor, config, generator: torch.Generator) -> torch.Tensor:
    if config.random_crop_padding:
        images = random_crop(images, config.random_crop_padding, config.padding_mode, generator)
    if config.horizontal_flip:
        images = random_flip(images, generator)
    return images

"""Batch augmentations that run on the tensors where they live (CPU or GPU); no DataLoader workers.

Images are float batches in the model's layout, B H W C.
"""

import torch
import torch.nn.functional as F


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Pad every side by `padding` (reflect) and cut a random H x W window per sample."""
    b, h, w, _ = images.shape
    padded = F.pad(images.permute(0, 3, 1, 2), (padding,) * 4, mode="reflect").permute(0, 2, 3, 1)  # B H+2p W+2p C
    dy = torch.randint(0, 2 * padding + 1, (b, 1, 1), generator=generator, device=generator.device).to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (b, 1, 1), generator=generator, device=generator.device).to(images.device)
    rows = torch.arange(h, device=images.device)[None, :, None] + dy  # B H 1
    cols = torch.arange(w, device=images.device)[None, None, :] + dx  # B 1 W
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, rows, cols]  # B H W C


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each sample left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device=generator.device).to(images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(2), images)


def augment_images(images: torch.Tensor, config, generator: torch.Generator) -> torch.Tensor:
    if config.random_crop_padding:
        images = random_crop(images, config.random_crop_padding, generator)
    if config.horizontal_flip:
        images = random_flip(images, generator)
    return images

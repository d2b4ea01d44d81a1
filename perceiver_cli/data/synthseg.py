"""SynthSeg-style images from label maps (Billot et al. 2023): every label gets a random intensity,
then blur, a smooth bias field, noise and a random contrast, so that a model trained on them learns
the shapes of the anatomy rather than one scanner's contrast.

One call makes one synthetic scan: its label intensities, blur and contrast are shared by all its
slices, the bias field and the noise are drawn per slice. Everything is vectorised over the slices
(numpy, and scipy's Gaussian filter), and the result depends only on the labels and the generator passed in.
"""

from __future__ import annotations

import hashlib

import numpy as np
from scipy import ndimage

MAX_STD = 25.0  # within-label spread, as SynthSeg's default (intensities 0..255)
BLUR = (0.3, 1.2)  # Gaussian sigma in pixels
BIAS_GRID, MAX_BIAS = 4, 0.4  # coarse grid of the log bias field, and its largest std
MAX_NOISE = 8.0
LOG_GAMMA_STD = 0.4


def generator(seed: int, name: str, copy: int) -> np.random.Generator:
    """The generator of one synthetic copy of the map `name`: the same (seed, name, copy) always
    gives the same image, whatever other files are prepared with it and in what order."""
    key = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, key, copy]))


def synthesize(labels: np.ndarray, num_labels: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 images (S, H, W) of one synthetic scan of the label slices `labels` (S, H, W), values 0..num_labels-1."""
    mean = rng.uniform(0, 255, num_labels).astype(np.float32)
    std = rng.uniform(0, MAX_STD, num_labels).astype(np.float32)
    image = mean[labels] + std[labels] * rng.standard_normal(labels.shape, dtype=np.float32)
    image = gaussian_blur(image, rng.uniform(*BLUR))
    image *= bias_field(labels.shape, rng.uniform(0, MAX_BIAS), rng)
    image += rng.uniform(0, MAX_NOISE) * rng.standard_normal(labels.shape, dtype=np.float32)
    low, high = np.percentile(image, [0.5, 99.5])  # the same window as real volumes get (nifti.to_uint8)
    image = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    image **= np.float32(np.exp(rng.normal(0, LOG_GAMMA_STD)))
    return np.round(image * 255).astype(np.uint8)


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Blur the last two axes with a Gaussian of `sigma` pixels, 3 sigma wide (edges mirrored:
    numpy's "reflect", scipy's "mirror"). scipy's separable filter is 1.4-2x faster than numpy
    shifts at sigma 0.75 and more exact (it sums in float64)."""
    return ndimage.gaussian_filter(images, sigma, mode="mirror", radius=max(1, int(np.ceil(3 * sigma))), axes=(-2, -1))


def bias_field(shape: tuple[int, int, int], strength: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field per slice: exp of a coarse random grid, upsampled linearly."""
    slices, height, width = shape
    coarse = rng.normal(0, strength, (slices, BIAS_GRID, BIAS_GRID)).astype(np.float32)
    return np.exp(_hat(height) @ coarse @ _hat(width).T)


def _hat(n: int) -> np.ndarray:
    """(n, BIAS_GRID) linear interpolation weights from the grid's nodes to n evenly spaced pixels."""
    positions = np.linspace(0, BIAS_GRID - 1, n)
    return np.maximum(0, 1 - np.abs(positions[:, None] - np.arange(BIAS_GRID)[None, :])).astype(np.float32)

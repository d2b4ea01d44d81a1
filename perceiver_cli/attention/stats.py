"""Numbers that describe an attention map (one sample, one cross-attend), stored beside the pictures.

    mass                 attention mass per token: the weights summed over heads and latents,
                         divided by heads * latents (a distribution over tokens: it sums to 1)
    entropy              normalised entropy of mass, H(mass) / log(tokens): 1 = spread evenly, 0 = one token
    top5_mass            share of the mass on the 5 % of tokens that get the most
    peaks                the tokens with the most mass (grid coordinates for images, indices for points)
    latents_used         latents that are the strongest reader of at least one token
    effective_latents    exp(entropy of how the tokens divide among their strongest readers): how many
                         latents do the reading, counting a latent that reads few tokens as less than one
"""

from __future__ import annotations

import math

import numpy as np

FORMULAS = {
    "entropy": "H(mass) / log(tokens), mass = attention summed over heads and latents, normalised",
    "top5_mass": "mass on the top 5 % of tokens",
    "latents_used": "latents that are the argmax reader of at least one token",
    "effective_latents": "exp(H(share of tokens per argmax latent))",
}


def token_mass(weights: np.ndarray) -> np.ndarray:
    """(heads, latents, tokens) -> (tokens,) summing to 1."""
    w = np.asarray(weights, dtype=np.float64)
    mass = w.sum(axis=(0, 1))
    return mass / mass.sum()


def latent_mass(weights: np.ndarray) -> np.ndarray:
    """(heads, latents, tokens) -> (latents, tokens): each latent's distribution over tokens (heads averaged)."""
    return np.asarray(weights, dtype=np.float64).mean(axis=0)


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def map_stats(weights: np.ndarray, token_grid: tuple[int, ...] = (), peaks: int = 3) -> dict:
    mass = token_mass(weights)
    tokens = mass.size
    top = max(1, math.ceil(0.05 * tokens))
    order = np.argsort(-mass, kind="stable")
    readers = latent_mass(weights).argmax(axis=0)  # the strongest reader of every token
    share = np.bincount(readers, minlength=weights.shape[1]) / tokens
    peak_list = []
    for index in order[:peaks]:
        where = [int(c) for c in np.unravel_index(int(index), token_grid)] if token_grid else int(index)
        peak_list.append({"token": where, "mass": round(float(mass[index]), 6)})
    return {
        "entropy": round(_entropy(mass) / math.log(tokens), 6) if tokens > 1 else 0.0,
        "top5_mass": round(float(mass[order[:top]].sum()), 6),
        "peaks": peak_list,
        "latents_used": int((share > 0).sum()),
        "effective_latents": round(math.exp(_entropy(share)), 3),
    }

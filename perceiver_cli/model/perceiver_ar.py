"""Perceiver AR (Hawthorne et al. 2022): long-context autoregressive modelling of bytes.

The last N positions of a window are the latents. They cross-attend, causally, to the whole window
(prefix and latents), then a causal Transformer runs over the latents alone, and each latent predicts
the next byte. The cost grows with N x context, not context^2.

    bytes (B L) -> embedding (B L D) -> latents = the last N (B N D)
    latents <- causal cross-attention to all L, then MLP          # cost N x L
    latents -> latent_blocks x causal self-attention + MLP         # cost N x N
    -> LayerNorm -> Linear -> next-byte logits (B N 256)

Positions are rotary (RoFormer) on half of each head's channels, as the official code and krasserm
do, and nothing else: a key's rotation depends only on its own position in the stream, so keys stay
valid when a window moves (the cache below). Causality compares positions, not indices: a query at
position i reads exactly the keys at positions <= i, whatever was dropped or padded in between
(SDPA's is_causal aligns query and key lengths top-left, which is wrong when they differ).

Prefix dropout (the paper's trick): in training each sample keeps a random share of its prefix
positions (1 - prefix_dropout), so a long context costs less and the model learns not to lean on any
one of them. Left padding: `valid` marks real bytes; positions count from each row's first real byte,
so a padded batch computes each row as it would alone.

Generation keeps an exact cache (ARCache): every layer's rotated keys and values of the positions seen.
A new byte becomes one more latent: its cross-attention reads the cached keys plus its own, and each
latent layer likewise; that is exactly what a full forward of the same view (the same window start
and the same first latent) computes. The view is moved (`Generator`) only by rebuilding the cache
from the bytes, so it never holds a key that a full forward of its view would not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MLP

VOCAB = 256  # bytes


class Rotary(nn.Module):
    """Rotates the first `rotated` channels of each head by its position (RoFormer's rotation, in
    the half-split layout: channel i pairs with channel i + rotated/2); the others pass through."""

    def __init__(self, head_dim: int, fraction: float = 0.5, base: float = 10_000.0):
        super().__init__()
        self.rotated = int(head_dim * fraction) // 2 * 2
        inv_freq = base ** (-torch.arange(0, self.rotated, 2, dtype=torch.float32) / max(self.rotated, 1))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: B H L Dh; positions: B L (long)."""
        if not self.rotated:
            return x
        angles = positions.to(torch.float32)[:, None, :, None] * self.inv_freq  # B 1 L r/2
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        half = self.rotated // 2
        x1, x2, rest = x[..., :half], x[..., half: self.rotated], x[..., self.rotated:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)


@dataclass
class KeysValues:
    """One attention layer's keys and values of the positions it has read (B H L Dh, rotated keys),
    their positions (B L) and which are real bytes (B L): what a cached step appends to."""

    k: torch.Tensor
    v: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor

    def extended(self, other: "KeysValues") -> "KeysValues":
        return KeysValues(torch.cat([self.k, other.k], 2), torch.cat([self.v, other.v], 2),
                          torch.cat([self.positions, other.positions], 1), torch.cat([self.valid, other.valid], 1))

    def __len__(self) -> int:
        return self.k.shape[2]


class CausalAttention(nn.Module):
    """Multi-head attention of queries to keys at positions <= theirs (pre-norm on both sides), with
    rotary positions; `past` keys and values (a cache) are read before the new ones."""

    def __init__(self, dim: int, heads: int, rotary_fraction: float, dropout: float, attention_dropout: float,
                 cross: bool):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.q_norm = nn.LayerNorm(dim)
        self.kv_norm = nn.LayerNorm(dim) if cross else self.q_norm
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)
        self.rotary = Rotary(self.head_dim, rotary_fraction)
        self.dropout, self.attention_dropout = nn.Dropout(dropout), attention_dropout

    def keys_values(self, x: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> KeysValues:
        k, v = self.kv(self.kv_norm(x)).unflatten(-1, (2, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        return KeysValues(self.rotary(k, positions), v, positions, valid)

    def forward(self, x_q: torch.Tensor, q_positions: torch.Tensor, keys: KeysValues) -> torch.Tensor:
        q = self.q(self.q_norm(x_q)).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # B H Nq Dh
        q = self.rotary(q, q_positions)
        # a query reads the real keys at positions <= its own: lower-right causal, for any lengths
        allowed = (keys.positions[:, None, :] <= q_positions[:, :, None]) & keys.valid[:, None, :]  # B Nq Lk
        out = F.scaled_dot_product_attention(q, keys.k, keys.v, attn_mask=allowed[:, None],
                                             dropout_p=self.attention_dropout if self.training else 0.0)
        return self.dropout(self.out(out.transpose(1, 2).flatten(2)))


class ARLayer(nn.Module):
    """x + attention(x -> keys), then x + MLP(x): the cross-attend (keys: the window) or a latent block."""

    def __init__(self, dim: int, heads: int, widening: int, rotary_fraction: float, dropout: float,
                 attention_dropout: float, cross: bool):
        super().__init__()
        self.attention = CausalAttention(dim, heads, rotary_fraction, dropout, attention_dropout, cross)
        self.mlp = MLP(dim, widening, "gelu", dropout)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, keys: KeysValues) -> torch.Tensor:
        x = x + self.attention(x, positions, keys)
        return x + self.mlp(x)


@dataclass
class ARCache:
    """The keys and values of the cross-attend (every position of the view) and of each latent block
    (the latents), after a forward with `cache=True`."""

    cross: KeysValues
    latent: list[KeysValues]
    next_position: torch.Tensor  # B: the position the next byte of each row takes

    @property
    def latents(self) -> int:
        return len(self.latent[0]) if self.latent else 0

    def __len__(self) -> int:
        return len(self.cross)


def positions_of(valid: torch.Tensor) -> torch.Tensor:
    """B L positions counted from each row's first real byte (left padding gets 0)."""
    return (valid.long().cumsum(1) - 1).clamp_min(0)


class PerceiverAR(nn.Module):
    def __init__(self, dim: int = 256, num_latents: int = 256, heads: int = 4, latent_blocks: int = 4,
                 widening: int = 4, rotary_fraction: float = 0.5, dropout: float = 0.0,
                 attention_dropout: float = 0.0, prefix_dropout: float = 0.5):
        super().__init__()
        self.num_latents, self.prefix_dropout = num_latents, prefix_dropout
        self.embedding = nn.Embedding(VOCAB, dim)
        self.cross = ARLayer(dim, heads, widening, rotary_fraction, dropout, attention_dropout, cross=True)
        self.blocks = nn.ModuleList(ARLayer(dim, heads, widening, rotary_fraction, dropout, attention_dropout,
                                            cross=False) for _ in range(latent_blocks))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB)
        self.activation_checkpointing = False
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None = None, num_latents: int | None = None,
                cache: bool = False):
        """Next-byte logits (B N 256, fp32 under autocast too) at the last N positions of `tokens` (B L
        uint8 or long); N = num_latents (default the model's, at most L). `valid` (B L bool): the real
        bytes of a left-padded batch. cache=True also returns the ARCache for `step`."""
        tokens = tokens.long()
        batch, length = tokens.shape
        valid = torch.ones_like(tokens, dtype=torch.bool) if valid is None else valid
        latents = min(num_latents or self.num_latents, length)
        positions = positions_of(valid)
        x = self.embedding(tokens)  # B L D
        x_latent, latent_positions = x[:, length - latents:], positions[:, length - latents:]
        keys_x, keys_positions, keys_valid = x, positions, valid
        prefix = length - latents
        if self.training and prefix and self.prefix_dropout:
            keys_x, keys_positions, keys_valid = self._drop_prefix(x, positions, valid, prefix)
        cross_keys = self.cross.attention.keys_values(keys_x, keys_positions, keys_valid)
        h = self.cross(x_latent, latent_positions, cross_keys)
        latent_valid = valid[:, length - latents:]
        latent_keys = []
        for block in self.blocks:
            keys = block.attention.keys_values(h, latent_positions, latent_valid)
            latent_keys.append(keys)
            h = block(h, latent_positions, keys)
        logits = self.head(self.norm(h)).float()
        if not cache:
            return logits
        return logits, ARCache(cross_keys, latent_keys, positions[:, -1] + 1)

    def _drop_prefix(self, x, positions, valid, prefix: int):
        """Keep a random (1 - prefix_dropout) of each sample's prefix positions, in order, and every latent."""
        keep = max(1, prefix - int(prefix * self.prefix_dropout))
        chosen = torch.rand(x.shape[0], prefix, device=x.device).topk(keep, dim=1).indices.sort(1).values  # B K
        index = torch.cat([chosen, torch.arange(prefix, x.shape[1], device=x.device).expand(x.shape[0], -1)], 1)
        return (x.gather(1, index[..., None].expand(-1, -1, x.shape[2])), positions.gather(1, index),
                valid.gather(1, index))

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, cache: ARCache) -> tuple[torch.Tensor, ARCache]:
        """The next-byte logits (B T 256) of `tokens` (B T) appended to the cached view as T more
        latents, and the cache with them: what forward() of the whole view (same first latent) gives."""
        tokens = tokens.long()
        batch, count = tokens.shape
        positions = cache.next_position[:, None] + torch.arange(count, device=tokens.device)  # B T
        valid = torch.ones_like(tokens, dtype=torch.bool)
        x = self.embedding(tokens)
        cross_keys = cache.cross.extended(self.cross.attention.keys_values(x, positions, valid))
        h = self.cross(x, positions, cross_keys)
        latent_keys = []
        for block, past in zip(self.blocks, cache.latent):
            keys = past.extended(block.attention.keys_values(h, positions, valid))
            latent_keys.append(keys)
            h = block(h, positions, keys)
        return self.head(self.norm(h)).float(), ARCache(cross_keys, latent_keys, positions[:, -1] + 1)


class Generator:
    """Byte-by-byte generation over a view of the bytes so far: the window starts at column `start`
    and the latents at column `first_latent`. Each new byte is one more latent (a cached step, or a
    full forward of the view when use_cache is False: the same logits). When the view would pass
    `context` bytes, or `num_latents + gap` latents, it moves: the last context - gap bytes, their last
    num_latents the latents, computed afresh (the cache rebuilt, never patched). `gap` (default
    num_latents) is how many bytes are generated between two moves.

    tokens (B T long) may be left-padded (`valid`); every row then generates as it would alone."""

    def __init__(self, model: PerceiverAR, context: int, gap: int | None = None, use_cache: bool = True):
        self.model, self.context, self.use_cache = model, context, use_cache
        self.latents = min(model.num_latents, context)
        self.gap = max(1, min(gap or self.latents, context - self.latents)) if context > self.latents else 1
        self.tokens = self.valid = self.cache = None
        self.start = self.first_latent = 0

    @torch.no_grad()
    def prompt(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Read the prompt (B T, T >= 1); the logits (B 256) of the byte after it."""
        self.tokens = tokens.long()
        self.valid = torch.ones_like(self.tokens, dtype=torch.bool) if valid is None else valid
        length = self.tokens.shape[1]
        view = min(length, self.context)
        self.start, self.first_latent = length - view, length - min(self.latents, view)
        return self._recompute()

    @torch.no_grad()
    def append(self, next_tokens: torch.Tensor) -> torch.Tensor:
        """Append one byte per row (B); the logits (B 256) of the byte after it."""
        new = next_tokens.long().reshape(-1, 1)
        self.tokens = torch.cat([self.tokens, new], 1)
        self.valid = torch.cat([self.valid, torch.ones_like(new, dtype=torch.bool)], 1)
        length = self.tokens.shape[1]
        if length - self.start > self.context or length - self.first_latent > self.latents + self.gap:
            view = min(length, self.context - self.gap)
            self.start, self.first_latent = length - view, length - min(self.latents, view)
            return self._recompute()
        if not self.use_cache:
            return self._recompute()
        logits, self.cache = self.model.step(new, self.cache)
        return logits[:, -1]

    def view(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(bytes of the view, their valid flags, how many of them are latents): what forward() reads."""
        return (self.tokens[:, self.start:], self.valid[:, self.start:], self.tokens.shape[1] - self.first_latent)

    def _recompute(self) -> torch.Tensor:
        tokens, valid, latents = self.view()
        if self.use_cache:
            logits, self.cache = self.model(tokens, valid, num_latents=latents, cache=True)
        else:
            logits = self.model(tokens, valid, num_latents=latents)
        return logits[:, -1]


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """One byte per row (B) from logits (B 256): temperature 0 (or top_k 1) is the most likely byte;
    top_k keeps the k most likely, top_p the smallest set whose probability reaches p (nucleus)."""
    logits = logits.float()
    if temperature <= 0 or top_k == 1:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ordered, order = logits.sort(-1, descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative - ordered.softmax(-1) >= top_p  # the byte that crosses p stays
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))  # back to byte order
    probabilities = logits.softmax(-1)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)

"""Perceiver AR (Hawthorne et al. 2022): long-context autoregressive modelling of bytes.

The last N positions of a window are the latents. They cross-attend, causally, to the whole window
(prefix and latents), then a causal Transformer runs over the latents alone, and each latent predicts
the next byte. The cost grows with N x context, not context^2.

    bytes (B L) -> embedding (B L D) -> latents = the last N (B N D)
    latents <- causal cross-attention to all L, then MLP          # cost N x L
               (its keys and values, per byte: a 256-row table looked up, not L projections)
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


@dataclass
class Positions:
    """Positions in the stream (B L long) and the cos and sin of their rotary angles (B 1 L r/2, fp32):
    computed once per forward or step and read by every layer (they all rotate alike)."""

    index: torch.Tensor
    cos: torch.Tensor | None
    sin: torch.Tensor | None

    def __getitem__(self, columns: slice) -> "Positions":
        if self.cos is None:
            return Positions(self.index[:, columns], None, None)
        return Positions(self.index[:, columns], self.cos[:, :, columns], self.sin[:, :, columns])


class Rotary(nn.Module):
    """RoFormer's rotation of the first `rotated` channels of each head by position (in the half-split
    layout: channel i pairs with channel i + rotated/2); the other channels pass through."""

    def __init__(self, head_dim: int, fraction: float = 0.5, base: float = 10_000.0):
        super().__init__()
        self.rotated = int(head_dim * fraction) // 2 * 2
        inv_freq = base ** (-torch.arange(0, self.rotated, 2, dtype=torch.float32) / max(self.rotated, 1))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def at(self, index: torch.Tensor) -> Positions:
        """The Positions of `index` (B L long)."""
        if not self.rotated:
            return Positions(index, None, None)
        angles = index.to(torch.float32)[:, None, :, None] * self.inv_freq  # B 1 L r/2
        return Positions(index, angles.cos(), angles.sin())


def rotate(x: torch.Tensor, positions: Positions) -> torch.Tensor:
    """x (B H L Dh) rotated by its positions."""
    if positions.cos is None:
        return x
    cos, sin = positions.cos.to(x.dtype), positions.sin.to(x.dtype)
    half = cos.shape[-1]
    x1, x2, rest = x[..., :half], x[..., half: 2 * half], x[..., 2 * half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)


@dataclass
class KeysValues:
    """One attention layer's keys and values of the positions it has read (B H L Dh, rotated keys),
    their positions (B L) and which are real bytes (B L; None: all of them, a batch without padding):
    what a cached step appends to.

    `storage`, when set, is a larger preallocated KeysValues whose first len(self) positions these
    are: extending then writes the new positions into it in place (no copy of the whole cache per
    byte). A cache is extended once, as generation does; a second extension of the same one would
    write over the positions the first one added."""

    k: torch.Tensor
    v: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor | None
    storage: "KeysValues | None" = None

    def reserved(self, capacity: int) -> "KeysValues":
        """The same keys and values, with room for `capacity` positions in all."""
        if capacity <= len(self):
            return self

        def room(t: torch.Tensor | None, dim: int) -> torch.Tensor | None:
            if t is None:
                return None
            buffer = t.new_empty(t.shape[:dim] + (capacity,) + t.shape[dim + 1:])
            buffer.narrow(dim, 0, t.shape[dim]).copy_(t)
            return buffer

        storage = KeysValues(room(self.k, 2), room(self.v, 2), room(self.positions, 1), room(self.valid, 1))
        return storage.first(len(self))

    def first(self, length: int) -> "KeysValues":
        return KeysValues(self.k[:, :, :length], self.v[:, :, :length], self.positions[:, :length],
                          None if self.valid is None else self.valid[:, :length], storage=self)

    def extended(self, other: "KeysValues") -> "KeysValues":
        start, end = len(self), len(self) + len(other)
        if self.storage is not None and end <= len(self.storage) and (self.valid is None) == (other.valid is None):
            storage = self.storage
            storage.k[:, :, start:end], storage.v[:, :, start:end] = other.k, other.v
            storage.positions[:, start:end] = other.positions
            if other.valid is not None:
                storage.valid[:, start:end] = other.valid
            return storage.first(end)
        return KeysValues(torch.cat([self.k, other.k], 2), torch.cat([self.v, other.v], 2),
                          torch.cat([self.positions, other.positions], 1),
                          None if self.valid is None and other.valid is None else
                          torch.cat([self.real(), other.real()], 1))

    def real(self) -> torch.Tensor:
        """Which positions are real bytes (B L bool)."""
        return torch.ones_like(self.positions, dtype=torch.bool) if self.valid is None else self.valid

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
        self.dropout, self.attention_dropout = nn.Dropout(dropout), attention_dropout

    def project_keys(self, normed: torch.Tensor, positions: Positions, valid: torch.Tensor | None) -> KeysValues:
        return self.keys_of(self.kv(normed), positions, valid)

    def keys_of(self, kv: torch.Tensor, positions: Positions, valid: torch.Tensor | None) -> KeysValues:
        """KeysValues from projected keys and values (B L 2D), the keys rotated by their positions."""
        k, v = kv.unflatten(-1, (2, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        return KeysValues(rotate(k, positions), v, positions.index, valid)

    def forward(self, x_q: torch.Tensor, q_positions: Positions, keys: KeysValues) -> torch.Tensor:
        return self.attend(self.q_norm(x_q), q_positions, keys)

    def attend(self, normed_q: torch.Tensor, q_positions: Positions, keys: KeysValues) -> torch.Tensor:
        q = self.q(normed_q).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # B H Nq Dh
        q = rotate(q, q_positions)
        # a query reads the real keys at positions <= its own: lower-right causal, for any lengths. One
        # query is always the newest position (a cached step, or a view with one latent): without padding
        # it reads every key, and needs no mask.
        allowed = None
        if q_positions.index.shape[1] > 1 or keys.valid is not None:
            allowed = keys.positions[:, None, :] <= q_positions.index[:, :, None]  # B Nq Lk
            allowed = (allowed if keys.valid is None else allowed & keys.valid[:, None, :])[:, None]
        out = F.scaled_dot_product_attention(q, keys.k, keys.v, attn_mask=allowed,
                                             dropout_p=self.attention_dropout if self.training else 0.0)
        return self.dropout(self.out(out.transpose(1, 2).flatten(2)))


class ARLayer(nn.Module):
    """x + attention(x -> keys), then x + MLP(x): the cross-attend (keys: the window) or a latent block."""

    def __init__(self, dim: int, heads: int, widening: int, rotary_fraction: float, dropout: float,
                 attention_dropout: float, cross: bool):
        super().__init__()
        self.attention = CausalAttention(dim, heads, rotary_fraction, dropout, attention_dropout, cross)
        self.mlp = MLP(dim, widening, "gelu", dropout)

    def forward(self, x: torch.Tensor, positions: Positions, keys: KeysValues) -> torch.Tensor:
        x = x + self.attention(x, positions, keys)
        return x + self.mlp(x)

    def self_attend(self, x: torch.Tensor, positions: Positions, valid: torch.Tensor | None,
                    past: KeysValues | None = None) -> tuple[torch.Tensor, KeysValues]:
        """A latent block: x attends to itself (after the `past` keys of a cache); also returns its keys.
        Queries and keys share the block's norm, so x is normed once."""
        normed = self.attention.q_norm(x)
        keys = self.attention.project_keys(normed, positions, valid)
        keys = keys if past is None else past.extended(keys)
        x = x + self.attention.attend(normed, positions, keys)
        return x + self.mlp(x), keys


@dataclass
class ARCache:
    """The keys and values of the cross-attend (every position of the view) and of each latent block
    (the latents), after a forward with `cache=True`."""

    cross: KeysValues
    latent: list[KeysValues]
    next_position: torch.Tensor  # B: the position the next byte of each row takes
    kv_table: torch.Tensor  # 256 2D: the cross-attend's keys and values of each byte, before rotation

    @property
    def latents(self) -> int:
        return len(self.latent[0]) if self.latent else 0

    def __len__(self) -> int:
        return len(self.cross)

    def reserved(self, cross: int, latent: int) -> "ARCache":
        """Room for `cross` positions in the cross-attend's cache and `latent` in each latent block's."""
        return ARCache(self.cross.reserved(cross), [keys.reserved(latent) for keys in self.latent], self.next_position,
                       self.kv_table)


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
        self.rotary = Rotary(dim // heads, rotary_fraction)  # every layer's heads rotate alike
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
        latents = min(num_latents or self.num_latents, length)
        positions = torch.arange(length, device=tokens.device).expand(batch, -1) if valid is None else positions_of(valid)
        keys_tokens, keys_index, keys_valid = tokens, positions, valid
        prefix = length - latents
        if self.training and prefix and self.prefix_dropout:
            keys_tokens, keys_index, keys_valid = self._drop_prefix(tokens, positions, valid, prefix)
        keys_positions = self.rotary.at(keys_index)
        latent_positions = keys_positions[-latents:]  # the keys end with every latent, dropout or not
        kv_table = self.cross_kv_table()
        cross_keys = self.cross.attention.keys_of(F.embedding(keys_tokens, kv_table), keys_positions, keys_valid)
        h = self.cross(self.embedding(tokens[:, length - latents:]), latent_positions, cross_keys)
        latent_valid = None if valid is None else valid[:, length - latents:]
        latent_keys = []
        for block in self.blocks:
            h, keys = block.self_attend(h, latent_positions, latent_valid)
            latent_keys.append(keys)
        logits = self.head(self.norm(h)).float()
        if not cache:
            return logits
        return logits, ARCache(cross_keys, latent_keys, positions[:, -1] + 1, kv_table)

    def cross_kv_table(self) -> torch.Tensor:
        """The cross-attend's keys and values (before rotation) of each of the 256 bytes (256 2D). They
        depend on the byte alone (embedding, then LayerNorm, then a linear map, all per position), so the
        window's are looked up in this table: one projection of 256 rows, not of every position."""
        attention = self.cross.attention
        return attention.kv(attention.kv_norm(self.embedding.weight))

    def _drop_prefix(self, tokens, positions, valid, prefix: int):
        """Keep a random (1 - prefix_dropout) of each sample's prefix positions, in order, and every latent."""
        batch, length = tokens.shape
        keep = max(1, prefix - int(prefix * self.prefix_dropout))
        chosen = torch.rand(batch, prefix, device=tokens.device).topk(keep, dim=1).indices.sort(1).values  # B K
        index = torch.cat([chosen, torch.arange(prefix, length, device=tokens.device).expand(batch, -1)], 1)
        return tokens.gather(1, index), positions.gather(1, index), None if valid is None else valid.gather(1, index)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, cache: ARCache) -> tuple[torch.Tensor, ARCache]:
        """The next-byte logits (B T 256) of `tokens` (B T) appended to the cached view as T more
        latents, and the cache with them: what forward() of the whole view (same first latent) gives."""
        tokens = tokens.long()
        batch, count = tokens.shape
        positions = self.rotary.at(cache.next_position[:, None] + torch.arange(count, device=tokens.device))  # B T
        valid = None if cache.cross.valid is None else torch.ones_like(tokens, dtype=torch.bool)  # padded before
        new_keys = self.cross.attention.keys_of(F.embedding(tokens, cache.kv_table), positions, valid)
        cross_keys = cache.cross.extended(new_keys)
        h = self.cross(self.embedding(tokens), positions, cross_keys)
        latent_keys = []
        for block, past in zip(self.blocks, cache.latent):
            h, keys = block.self_attend(h, positions, valid, past)
            latent_keys.append(keys)
        return self.head(self.norm(h)).float(), ARCache(cross_keys, latent_keys, positions.index[:, -1] + 1,
                                                        cache.kv_table)


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
        self.padded = False
        self.start = self.first_latent = 0

    @torch.no_grad()
    def prompt(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Read the prompt (B T, T >= 1); the logits (B 256) of the byte after it."""
        self.tokens = tokens.long()
        self.valid = torch.ones_like(self.tokens, dtype=torch.bool) if valid is None else valid
        self.padded = valid is not None
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
        valid = valid if self.padded else None  # None: no row is padded (the model then needs no mask)
        if self.use_cache:
            logits, cache = self.model(tokens, valid, num_latents=latents, cache=True)
            # the view grows to `context` bytes and `latents + gap` latents before it next moves
            self.cache = cache.reserved(self.context, self.latents + self.gap)
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

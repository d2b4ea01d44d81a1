"""The Perceiver (Jaegle et al., 2021): a latent array cross-attends to the input, a latent
Transformer processes it, repeated `cross_attends` times; then a classification head.

    latents  = latent array (N x D), truncated-normal init, std 0.02
    for i in range(cross_attends):
        latents = CrossAttend_i(latents, input)      # i >= 1 share weights (paper)
        latents = LatentTransformer_i(latents)       # all share weights (paper)
    logits = Head(latents)                           # mean over latents | CLS latent | IO query

PerceiverEncoder is everything up to the head; the classifier (Perceiver) and the Perceiver IO
models with structured outputs (perceiver_io.py) add their decoders to it, under the same
parameter names, so an encoder trained by one task starts another (train.init).
"""

from dataclasses import dataclass

import torch
from einops import repeat
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import MLP, CrossAttendBlock, CrossAttention, LatentTransformer
from .decoder import decode
from .inputs import build_adapter


@dataclass
class PerceiverOutput:
    logits: torch.Tensor
    # one (B, heads, latents, inputs) tensor per cross-attend, when asked for
    cross_attention: list[torch.Tensor] | None = None


class PerceiverEncoder(nn.Module):
    """Input adapter, latent array, cross-attends and latent Transformers: inputs -> latents (B N D)."""

    def __init__(self, config, input_spec: dict, extra_latents: int = 0):
        super().__init__()
        self.config, self.input_spec = config, dict(input_spec)
        dim = config.latent_dim
        self.adapter = build_adapter(config, input_spec)
        x_ch, pe_ch = self.adapter.x_channels, self.adapter.pe_channels

        num_latents = config.num_latents + extra_latents
        self.latents = nn.Parameter(torch.empty(num_latents, dim))
        nn.init.trunc_normal_(self.latents, std=0.02)

        cross_head_dim = config.cross_head_dim or dim // config.cross_heads
        latent_head_dim = config.latent_head_dim or dim // config.latent_heads
        make_cross = lambda: CrossAttendBlock(  # noqa: E731
            dim, x_ch, pe_ch, config.cross_heads, cross_head_dim, config.widening_factor,
            config.activation, config.dropout, config.attention_dropout,
        )
        make_latent = lambda: LatentTransformer(  # noqa: E731
            dim, config.latent_blocks, config.latent_heads, latent_head_dim, config.widening_factor,
            config.activation, config.dropout, config.attention_dropout,
        )
        # Weight sharing as in the paper: the first cross-attend has its own weights (sharing it was
        # unstable), all later ones share one set; every latent Transformer shares one set.
        later = 1 if config.cross_attends > 1 else 0
        if config.share_weights:
            self.cross_blocks = nn.ModuleList([make_cross()] + ([make_cross()] if later else []))
            self.cross_index = [0] + [1] * (config.cross_attends - 1)
            if config.share_first_latent:
                self.latent_blocks = nn.ModuleList([make_latent()])
                self.latent_index = [0] * config.cross_attends
            else:  # block 0 (cross + latent) on its own, blocks 1.. share one set
                self.latent_blocks = nn.ModuleList([make_latent()] + ([make_latent()] if later else []))
                self.latent_index = list(self.cross_index)
        else:
            self.cross_blocks = nn.ModuleList(make_cross() for _ in range(config.cross_attends))
            self.latent_blocks = nn.ModuleList(make_latent() for _ in range(config.cross_attends))
            self.cross_index = self.latent_index = list(range(config.cross_attends))
        self.activation_checkpointing = False  # set by the engine from train.activation_checkpointing

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None, return_attention: bool = False):
        """x: a batch in the adapter's layout (e.g. B H W C images) -> (latents B N D, cross-attention
        weights per cross-attend when `return_attention`, else [])."""
        tokens, pe, mask = self.adapter(x, mask)
        return self.encode_tokens(tokens, pe, mask, return_attention)

    def encode_tokens(self, tokens: torch.Tensor, pe, mask: torch.Tensor | None = None, return_attention: bool = False):
        """The same from the adapter's tokens (B M C_x) and positions (M or B M, C_pe): for a model
        that reads only some of them (masked image modelling)."""
        latents = repeat(self.latents, "n d -> b n d", b=tokens.shape[0])
        kv_cache: dict = {}  # a shared cross-attend sees the same input: project it once
        maps = []
        for cross_i, latent_i in zip(self.cross_index, self.latent_index):
            block = self.cross_blocks[cross_i]
            if self._checkpointing():  # keys/values recomputed in the backward pass, never stored
                latents, weights = checkpoint(_cross_attend, block, latents, tokens, pe, mask, use_reentrant=False)
            else:
                if cross_i not in kv_cache:
                    kv_cache[cross_i] = block.attention.keys_values(tokens, pe, mask, return_attention)
                latents, weights = block(latents, kv_cache[cross_i], mask, return_attention)
            latents = self._run(self.latent_blocks[latent_i], latents)
            if return_attention:
                maps.append(weights)
        return latents, maps

    def _checkpointing(self) -> bool:
        return self.activation_checkpointing and self.training and torch.is_grad_enabled()

    def _run(self, block, *args):
        """A block, or with activation checkpointing (training only) the same block with its inner
        activations recomputed in the backward pass instead of stored: memory for very large inputs."""
        return checkpoint(block, *args, use_reentrant=False) if self._checkpointing() else block(*args)


class Perceiver(PerceiverEncoder):
    """The classifier: the encoder, then one vector per sample (mean over latents, a CLS latent, or
    one learned Perceiver IO query) -> LayerNorm -> Linear to the classes."""

    def __init__(self, config, input_spec: dict, num_classes: int):
        super().__init__(config, input_spec, extra_latents=1 if config.output == "cls" else 0)
        self.num_classes = num_classes
        dim = config.latent_dim
        cross_head_dim = config.cross_head_dim or dim // config.cross_heads
        if config.output == "query":  # Perceiver IO decoder: one learned query attends to the latents
            self.query = nn.Parameter(torch.empty(1, dim))
            nn.init.trunc_normal_(self.query, std=0.02)
            self.decoder = CrossAttention(dim, dim, 0, config.cross_heads, cross_head_dim, 0.0, 0.0)
            self.decoder_mlp = MLP(dim, config.widening_factor, config.activation, config.dropout)
        self.head_norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, return_attention: bool = False):
        """x: a batch in the adapter's layout (e.g. B H W C images). Returns logits, or a
        PerceiverOutput with the cross-attention weights when `return_attention` (eager path)."""
        latents, maps = self.encode(x, mask, return_attention)
        logits = self.classifier(self.head_norm(self._pool(latents)))
        return PerceiverOutput(logits, maps) if return_attention else logits

    def _pool(self, latents: torch.Tensor) -> torch.Tensor:
        if self.config.output == "mean":
            return latents.mean(dim=1)
        if self.config.output == "cls":
            return latents[:, -1]
        query = repeat(self.query, "n d -> b n d", b=latents.shape[0])
        return decode(self.decoder, self.decoder_mlp, query, latents)[:, 0]


def _cross_attend(block, latents, tokens, pe, mask):
    """Project the input and cross-attend, as one unit for activation checkpointing."""
    return block(latents, block.attention.keys_values(tokens, pe, mask), mask, False)


def build_model(config, input_spec: dict, num_classes: int) -> Perceiver:
    return Perceiver(config, input_spec, num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""Perceiver IO's masked language model on bytes (Jaegle et al. 2022, Sec. 4.1: UTF-8 bytes, no tokenizer).

    bytes (B L, the hidden ones replaced) -> embedding + learned position (B L C)
    latents (N D) <- cross-attend to the L inputs, then latent_blocks self-attention blocks
    queries = learned position embeddings of the hidden positions (B Q C_q) <- cross-attend to the latents
    -> Linear -> byte logits (B Q 256)

Only the hidden positions are decoded: each query is its position's own, and queries never attend to
each other, so decoding Q of them costs Q, not L.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import CrossAttendBlock, LatentTransformer
from .decoder import QueryDecoder

VOCAB = 256
MASK = 256  # the mask token: a 257th row of the input embedding, never a target


class BytePerceiverIO(nn.Module):
    def __init__(self, length: int, num_latents: int = 128, latent_dim: int = 256, input_dim: int = 128,
                 latent_blocks: int = 4, cross_heads: int = 1, latent_heads: int = 4, widening: int = 4,
                 dropout: float = 0.0, attention_dropout: float = 0.0):
        super().__init__()
        self.length = length
        self.embedding = nn.Embedding(VOCAB + 1, input_dim)
        self.position = nn.Parameter(torch.randn(length, input_dim) * 0.02)
        self.latents = nn.Parameter(torch.randn(num_latents, latent_dim) * 0.02)
        self.encode = CrossAttendBlock(latent_dim, input_dim, 0, cross_heads, latent_dim // cross_heads, widening, "gelu",
                                       dropout, attention_dropout)
        self.transformer = LatentTransformer(latent_dim, latent_blocks, latent_heads, latent_dim // latent_heads, widening,
                                             "gelu", dropout, attention_dropout)
        self.query_position = nn.Parameter(torch.randn(length, input_dim) * 0.02)
        self.decoder = QueryDecoder(input_dim, latent_dim, cross_heads, latent_dim // cross_heads, widening, "gelu", dropout)
        self.head = nn.Linear(input_dim, VOCAB)
        self.activation_checkpointing = False
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """tokens: B L (long, MASK where hidden from the model); hidden: B Q positions to predict -> B Q 256."""
        x = self.embedding(tokens.long()) + self.position[: tokens.shape[1]]  # B L C
        latents = self.latents.expand(len(x), -1, -1)
        latents, _ = self.encode(latents, self.encode.attention.keys_values(x, None))
        latents = self.transformer(latents)
        queries = self.query_position[hidden]  # B Q C
        return self.head(self.decoder(queries, latents)).float()

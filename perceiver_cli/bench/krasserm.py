"""krasserm/perceiver-io (the `perceiver-io` package) built as our DensePerceiver, for
`perceiver bench RECIPE --compare krasserm` on a segment recipe.

Built from their generic parts (perceiver.model.core): PerceiverEncoder, PerceiverDecoder and
PerceiverIO, with the three task pieces their own models define for themselves, written here as
theirs are:
  input    their ImageInputAdapter: one token per pixel, [pixel; Fourier features of its position]
           (their vision package cannot be imported without transformers, so it is restated here);
  queries  their optical-flow model's: each pixel's adapted input (pixel + position) is its output
           query, here through one Linear to the decoder's width, as ours projects its queries;
  output   a LayerNorm and a Linear to K logits per pixel (their flow adapter: a Linear), as ours.
Ours is built to match (`matched_config`): one token per pixel (no patches, no conv stem), one
query per pixel (output_stride 1), GELU MLPs, the paper's weight sharing. What still differs:
their query projections and self-attention keys/values have biases (ours none: 0.2 % of the
parameters in knee_seg), their attention is einsum + softmax (ours fused SDPA / grid attention),
and their Fourier frequencies run to half of each axis' size (ours to model.max_freq / 2: the same
shapes and cost).
"""

from __future__ import annotations

import warnings

from ..errors import UserError

PACKAGE = "perceiver-io"
VERSION = "0.11.0"
# its metadata asks for Python < 3.11 and pins old einops / pytorch-lightning, but its model code
# needs only torch, einops and fairscale: pip's resolver refuses it on 3.11, this installs it
INSTALL = f"pip install --no-deps --ignore-requires-python {PACKAGE}=={VERSION} fairscale==0.4.13"


def installed_version() -> str | None:
    """perceiver-io's version when its model code imports, else None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        from perceiver.model.core import PerceiverDecoder  # noqa: F401
        return version(PACKAGE)
    except (ImportError, PackageNotFoundError):
        return None


def available() -> bool:
    return installed_version() == VERSION


def check_available() -> None:
    found = installed_version()
    if found is None:
        raise UserError(f"--compare krasserm needs krasserm's {PACKAGE} package, which is not installed: {INSTALL}")
    if found != VERSION:
        raise UserError(f"--compare krasserm is built for {PACKAGE} {VERSION}, found {found}: {INSTALL}")


def matched_config(model, task):
    """(model, task) configs of ours, restricted to what their Perceiver IO can express."""
    model = model.model_copy(update={
        "patch_size": 1, "conv_stem": 0, "permute_pixels": False, "position_encoding": "fourier", "activation": "gelu",
        "share_weights": True,  # theirs always shares cross-attends 2.. and latent blocks 2..
        "cross_head_dim": model.cross_head_dim or model.latent_dim // model.cross_heads,
        "latent_head_dim": model.latent_head_dim or model.latent_dim // model.latent_heads,
        "decoder_dim": model.decoder_dim or model.latent_dim, "decoder_chunk": None,
    })
    return model, task.model_copy(update={"output_stride": 1})


def build(config, task, input_spec: dict, num_classes: int):
    """Their per-pixel Perceiver IO at our (matched) configuration: B H W C images -> B H W K logits."""
    check_available()
    if input_spec["kind"] != "image":
        raise UserError("--compare krasserm: its per-pixel decoder is compared on images only")
    import torch
    from einops import rearrange
    from perceiver.model.core import (
        FourierPositionEncoding,
        InputAdapter,
        OutputAdapter,
        PerceiverDecoder,
        PerceiverEncoder,
        PerceiverIO,
        QueryProvider,
    )
    from torch import nn

    config, task = matched_config(config, task)
    height, width, channels = input_spec["shape"]

    class ImageInputAdapter(InputAdapter):  # theirs, from perceiver/model/vision/image_classifier/backend.py
        def __init__(self):
            with warnings.catch_warnings():  # their torch.meshgrid call without `indexing` (the default, "ij")
                warnings.filterwarnings("ignore", message="torch.meshgrid")
                position_encoding = FourierPositionEncoding(input_shape=(height, width), num_frequency_bands=config.num_bands)
            super().__init__(num_input_channels=channels + position_encoding.num_position_encoding_channels())
            self.position_encoding = position_encoding

        def forward(self, x):
            return torch.cat([rearrange(x, "b ... c -> b (...) c"), self.position_encoding(x.shape[0])], dim=-1)

    class PixelQueryProvider(nn.Module, QueryProvider):  # their OpticalFlowQueryProvider, projected
        def __init__(self, adapted_channels: int, dim: int):
            super().__init__()
            self.skip = 0 if task.query_pixels else channels  # positions only: the pixel channels left out
            self.proj = nn.Linear(adapted_channels - self.skip, dim)

        @property
        def num_query_channels(self):
            return self.proj.out_features

        def forward(self, x_adapted):
            return self.proj(x_adapted[..., self.skip:])

    class PixelLogits(OutputAdapter):
        def __init__(self, dim: int):
            super().__init__()
            self.norm, self.linear = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

        def forward(self, x):
            return rearrange(self.linear(self.norm(x)), "b (h w) k -> b h w k", h=height)

    class DensePerceiverIO(PerceiverIO):  # as their OpticalFlow: the decoder reads the adapted input
        def forward(self, x):
            latents, adapted = self.encoder(x, return_adapted_input=True)
            return self.decoder(latents, x_adapted=adapted)

    adapter = ImageInputAdapter()
    cross, latent, dim = config.cross_heads * config.cross_head_dim, config.latent_heads * config.latent_head_dim, config.decoder_dim
    encoder = PerceiverEncoder(
        input_adapter=adapter, num_latents=config.num_latents, num_latent_channels=config.latent_dim,
        num_cross_attention_heads=config.cross_heads, num_cross_attention_qk_channels=cross, num_cross_attention_v_channels=cross,
        num_cross_attention_layers=config.cross_attends, first_cross_attention_layer_shared=False,
        cross_attention_widening_factor=config.widening_factor,
        num_self_attention_heads=config.latent_heads, num_self_attention_qk_channels=latent, num_self_attention_v_channels=latent,
        num_self_attention_layers_per_block=config.latent_blocks, num_self_attention_blocks=config.cross_attends,
        first_self_attention_block_shared=config.share_first_latent, self_attention_widening_factor=config.widening_factor,
        dropout=config.attention_dropout, residual_dropout=config.dropout,
    )
    decoder = PerceiverDecoder(
        output_adapter=PixelLogits(dim), output_query_provider=PixelQueryProvider(adapter.num_input_channels, dim),
        num_latent_channels=config.latent_dim, num_cross_attention_heads=config.decoder_heads,
        num_cross_attention_qk_channels=dim, num_cross_attention_v_channels=dim,
        cross_attention_widening_factor=config.widening_factor,
    )
    return DensePerceiverIO(encoder, decoder)

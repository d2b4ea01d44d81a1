"""lucidrains/perceiver-pytorch built with our recipe's architecture, for `perceiver bench --compare lucidrains`.

Its Perceiver always uses GEGLU MLPs widened 4x, one token per pixel, Fourier positions, mean
pooling, and ties weights as "block 0 on its own, blocks 1.. shared" (weight_tie_layers). Ours is
built to match: `matched_config` returns the recipe's model with those choices made explicit, so
the two have the same shapes and (within 1 %) the same parameter count.
"""

from __future__ import annotations

from ..errors import UserError

PACKAGE = "perceiver-pytorch"


def available() -> bool:
    try:
        import perceiver_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def matched_config(config):
    """Our model config, restricted to what lucidrains' Perceiver can express."""
    return config.model_copy(update={
        "activation": "geglu", "widening_factor": 4, "patch_size": 1, "conv_stem": 0, "position_encoding": "fourier",
        "output": "mean", "share_first_latent": False, "permute_pixels": False,
        "cross_head_dim": config.cross_head_dim or config.latent_dim // config.cross_heads,
        "latent_head_dim": config.latent_head_dim or config.latent_dim // config.latent_heads,
    })


def build(config, input_spec: dict, num_classes: int):
    if not available():
        raise UserError(f"--compare lucidrains needs the {PACKAGE} package: pip install {PACKAGE}")
    if input_spec["kind"] != "image":
        raise UserError("--compare lucidrains: its Perceiver is compared on images only")
    from perceiver_pytorch import Perceiver

    config = matched_config(config)
    channels = input_spec["shape"][-1]
    return Perceiver(
        num_freq_bands=config.num_bands, depth=config.cross_attends, max_freq=config.max_freq,
        input_channels=channels, input_axis=2, num_latents=config.num_latents, latent_dim=config.latent_dim,
        cross_heads=config.cross_heads, latent_heads=config.latent_heads, cross_dim_head=config.cross_head_dim,
        latent_dim_head=config.latent_head_dim, num_classes=num_classes, attn_dropout=config.attention_dropout,
        ff_dropout=config.dropout, weight_tie_layers=config.share_weights, self_per_cross_attn=config.latent_blocks,
    )

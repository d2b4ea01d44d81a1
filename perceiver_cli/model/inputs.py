"""Input adapters: turn a batch of one modality into tokens (B M C_x) and positions (M or B M, C_pe).

    image     (B, H, W, C)   -> H*W tokens of C channels, positions on the H x W grid; with
                                 patch_size p > 1, (H/p)*(W/p) tokens of p*p*C channels (Perceiver IO's
                                 patch preprocessing), positions on the patch grid; conv_stem k > 0 first
                                 maps the image to (H/2, W/2, k) with conv 3x3 + GELU + maxpool 2
    sequence  (B, L, C)      -> L tokens, positions on a 1D grid
    points    (B, N, 3 + F)  -> N tokens of F features, positions = Fourier features of xyz (per sample);
                                 a padding mask (B, N) marks the real points of variable-length sets
"""

import math

import torch
from einops import rearrange
from torch import nn

from ..errors import UserError
from .position import FourierGridEncoding, FourierPointEncoding, LearnedEncoding


class InputAdapter(nn.Module):
    """Shared behaviour: the position encoding and the optional fixed permutation of positions."""

    def __init__(self, config, grid_shape: tuple[int, ...], channels: int):
        super().__init__()
        self.grid_shape = tuple(grid_shape)
        self.x_channels = channels
        num_positions = math.prod(self.grid_shape)
        if config.position_encoding == "learned":
            self.position = LearnedEncoding(num_positions, config.learned_dim)
        else:
            self.position = FourierGridEncoding(len(self.grid_shape), config.num_bands, config.max_freq)
        self.pe_channels = self.position.channels
        permutation = None
        if config.permute_pixels:
            generator = torch.Generator().manual_seed(config.permute_seed)
            permutation = torch.randperm(num_positions, generator=generator)
        self.register_buffer("permutation", permutation, persistent=True)  # None when off

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def grid(self, x: torch.Tensor) -> tuple[int, ...]:
        return tuple(x.shape[1:-1])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        grid = self.grid(x)
        tokens = self.tokens(x)  # B M C_x
        if self.permutation is not None and tokens.shape[1] != self.permutation.numel():
            raise ValueError(f"pixel permutation was built for {self.permutation.numel()} positions, input has {tokens.shape[1]}")
        if isinstance(self.position, FourierGridEncoding) and len(grid) > 1:
            # kept per axis (cached per grid shape): the projection then costs H + W rows, not H * W
            pe = self.position.separable(grid, x.device, order=self.permutation)
        else:
            pe = self.position(grid, x.device)  # M C_pe, built once per grid shape
            pe = pe if self.permutation is None else pe[self.permutation]
        if self.permutation is not None:  # pixels and their positions move together: a scrambled order
            tokens = tokens[:, self.permutation]
        return tokens, pe, mask


class ImageAdapter(InputAdapter):
    """Pixels (or patches, or conv-stem features) as tokens. Each token covers `stride` x `stride`
    input pixels: patch_size, times 2 with the conv stem."""

    def __init__(self, config, image_shape: tuple[int, int, int]):
        height, width, channels = image_shape
        self.stem = None
        stages = getattr(config, "conv_stem_stages", 1) if config.conv_stem else 0
        self.stride = config.patch_size * 2**stages
        if height % self.stride or width % self.stride:
            raise UserError(f"model.patch_size={config.patch_size} (x2 per conv_stem stage) does not divide the "
                            f"{height}x{width} images: choose a patch size that divides both sides")
        stem_channels = config.conv_stem * 2 ** (stages - 1) if stages else channels
        super().__init__(config, (height // self.stride, width // self.stride), stem_channels * config.patch_size**2)
        self.patch = config.patch_size
        if stages == 1:
            # Perceiver IO's "conv + maxpool" preprocessing, sized for small images
            self.stem = nn.Sequential(nn.Conv2d(channels, config.conv_stem, 3, padding=1), nn.GELU(), nn.MaxPool2d(2))
        elif stages > 1:  # more of it: each stage sees twice the pixels with twice the channels
            layers, before = [], channels
            for stage in range(stages):
                after = config.conv_stem * 2**stage
                layers += [nn.Conv2d(before, after, 3, padding=1, bias=False), nn.BatchNorm2d(after), nn.GELU(),
                           nn.MaxPool2d(2)]
                before = after
            self.stem = nn.Sequential(*layers)

    def grid(self, x):
        return (x.shape[1] // self.stride, x.shape[2] // self.stride)

    def tokens(self, x):
        if self.stem is not None:
            x = self.stem(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # B H/stride' W/stride' C
        return rearrange(x, "b (h p1) (w p2) c -> b (h w) (p1 p2 c)", p1=self.patch, p2=self.patch)


class SequenceAdapter(InputAdapter):
    def tokens(self, x):
        return x


class PointAdapter(nn.Module):
    """Point sets: positions come from each point's coordinates, so they are per sample."""

    def __init__(self, config, coords: int, features: int):
        super().__init__()
        self.coords = coords
        self.x_channels = features
        self.position = FourierPointEncoding(coords, config.num_bands, config.max_freq)
        self.pe_channels = self.position.channels

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        coordinates, features = x[..., : self.coords], x[..., self.coords :]
        return features, self.position(coordinates), mask


def build_adapter(config, input_spec: dict) -> nn.Module:
    kind = input_spec["kind"]
    if kind == "image":
        return ImageAdapter(config, tuple(input_spec["shape"]))
    if kind == "sequence":
        length, channels = input_spec["shape"]
        return SequenceAdapter(config, (length,), channels)
    if kind == "points":
        if config.position_encoding != "fourier":
            raise UserError("model.position_encoding=learned does not apply to point sets (their positions come from "
                            "coordinates): use model.position_encoding=fourier")
        return PointAdapter(config, input_spec.get("coords", 3), input_spec.get("features", 0))
    raise ValueError(f"unknown input kind {kind!r}")

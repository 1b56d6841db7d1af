"""guided-diffusion's noisy-image classifier (`EncoderUNetModel`), state_dict-compatible with
`256x256_classifier.pt`, for classifier guidance.

The torso is the ADM UNet's encoder half (time embedding, input blocks, middle block; blocks from
`adm_unet.py`); the head is group norm, SiLU and either an attention pool over the final feature
map plus its mean (`pool="attention"`, keys `out.2.positional_embedding`, `out.2.qkv_proj`,
`out.2.c_proj`; heads in the non-legacy [q | k | v] layout) or a global average pool and 1x1 conv
(`pool="adaptive"`). `forward(x, timesteps)` maps x (B, C, H, W) and timesteps (B,) to logits
(B, out_channels).

`classifier_from_config` accepts the `create_classifier` factory's kwargs
(`create_classifier_kwargs`, `classifier_*` names; image sizes 64, 128, 256, 512) or the encoder's
own kwargs at any image size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ddnm.models.adm_unet import (
    FACTORY_CHANNEL_MULT,
    NUM_CLASSES,
    BlockOptions,
    attention,
    attention_factors,
    build_encoder,
    normalization,
    require,
    select_kwargs,
    split_heads,
    time_embed_mlp,
    timestep_embedding,
    zero_module,
)
from ddnm.models.precision import check_torso_dtype, convert_convs

POOLS = ("attention", "adaptive")


class AttentionPool2d(nn.Module):
    """Attention from the mean feature (as an extra token) to all positions; returns that token.

    (B, C, S, S) -> (B, output_dim), with learned positional embeddings for the S*S + 1 tokens.
    """

    def __init__(self, spatial_dim: int, embed_dim: int, head_channels: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(
            torch.randn(embed_dim, spatial_dim**2 + 1) / embed_dim**0.5
        )
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim, 1)
        self.num_heads = embed_dim // head_channels

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        x = x.reshape(B, C, H * W)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        q, k, v = split_heads(self.qkv_proj(x), self.num_heads, legacy=False)
        h = attention(q, k, v).reshape(B, C, -1)
        return self.c_proj(h)[:, :, 0]


class EncoderUNetModel(nn.Module):
    """guided-diffusion's EncoderUNetModel with the "attention" or "adaptive" pool head."""

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        pool: str = "adaptive",
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if pool == "attention" and num_head_channels == -1:
            raise ValueError('pool="attention" needs num_head_channels')
        self.model_channels = model_channels
        # the attention pool's positional embedding fixes the input size; the adaptive pool does not
        self.input_size = image_size if pool == "attention" else None
        self.out_channels = out_channels  # the number of classes
        opts = BlockOptions(
            4 * model_channels,
            dropout,
            use_scale_shift_norm,
            num_head_channels,
            use_new_attention_order,
        )
        self.time_embed = time_embed_mlp(model_channels)
        encoder = build_encoder(
            in_channels,
            model_channels,
            num_res_blocks,
            attention_resolutions,
            channel_mult,
            num_heads,
            resblock_updown,
            conv_resample,
            opts,
        )
        self.input_blocks, self.middle_block = encoder.input_blocks, encoder.middle_block
        ch = encoder.channels
        head: list[nn.Module] = (
            [AttentionPool2d(image_size // encoder.ds, ch, num_head_channels, out_channels)]
            if pool == "attention"
            else [
                nn.AdaptiveAvgPool2d((1, 1)),
                zero_module(nn.Conv2d(ch, out_channels, 1)),
                nn.Flatten(),
            ]
        )
        self.out = nn.Sequential(normalization(ch), nn.SiLU(), *head)

    @property
    def torso_dtype(self) -> torch.dtype:
        return next(self.input_blocks.parameters()).dtype

    def convert_torso(self, dtype: torch.dtype) -> None:
        """Run input and middle blocks in `dtype` (the reference's `convert_to_fp16()`)."""
        check_torso_dtype(dtype)
        convert_convs([self.input_blocks, self.middle_block], dtype)

    def forward(self, x: Tensor, timesteps: Tensor) -> Tensor:
        """x (B, C, H, W) noisy image, timesteps (B,) -> logits (B, out_channels)."""
        size = self.input_size
        if size is not None and (x.ndim != 4 or x.shape[2:] != (size, size)):
            raise ValueError(f"x must have shape (B, C, {size}, {size}), got {tuple(x.shape)}")
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        h = x.to(self.torso_dtype)
        for block in self.input_blocks:
            h = block(h, emb)
        h = self.middle_block(h, emb)
        return self.out(h.to(x.dtype))


# guided-diffusion's classifier_defaults(), used for keys a factory dict leaves out
CLASSIFIER_DEFAULTS: dict[str, object] = {
    "classifier_width": 128,
    "classifier_depth": 2,
    "classifier_attention_resolutions": "32,16,8",
    "classifier_use_scale_shift_norm": True,
    "classifier_resblock_updown": True,
    "classifier_pool": "attention",
}


def encoder_kwargs_from_factory(kw: Mapping[str, object]) -> dict[str, object]:
    """guided-diffusion `create_classifier(**kw)` -> `EncoderUNetModel` keyword arguments."""
    require(kw, "image_size")
    kw = {**CLASSIFIER_DEFAULTS, **kw}
    image_size = int(kw["image_size"])  # type: ignore[call-overload]
    if image_size not in FACTORY_CHANNEL_MULT:
        raise ValueError(
            f"create_classifier image_size must be one of {sorted(FACTORY_CHANNEL_MULT)}, "
            f"got {image_size} (give the encoder's kwargs for other sizes)"
        )
    return {
        "image_size": image_size,
        "in_channels": 3,
        "model_channels": kw["classifier_width"],
        "out_channels": NUM_CLASSES,
        "num_res_blocks": kw["classifier_depth"],
        "attention_resolutions": attention_factors(
            kw["classifier_attention_resolutions"],  # type: ignore[arg-type]
            image_size,
        ),
        "channel_mult": FACTORY_CHANNEL_MULT[image_size],
        "num_head_channels": 64,
        "use_scale_shift_norm": kw["classifier_use_scale_shift_norm"],
        "resblock_updown": kw["classifier_resblock_updown"],
        "pool": kw["classifier_pool"],
    }


def classifier_from_config(config: Mapping[str, object]) -> EncoderUNetModel:
    """Build an `EncoderUNetModel` (random init) from `create_classifier_kwargs` (nested or
    flat) or from the encoder's own kwargs (recognised by `model_channels`)."""
    if "create_classifier_kwargs" in config:
        kwargs = encoder_kwargs_from_factory(config["create_classifier_kwargs"])  # type: ignore[arg-type]
    elif "model_channels" in config:
        kwargs = select_kwargs(EncoderUNetModel, config)
    else:
        kwargs = encoder_kwargs_from_factory(config)
    require(kwargs, "image_size", "in_channels", "model_channels", "out_channels")
    return EncoderUNetModel(**kwargs)  # type: ignore[arg-type]

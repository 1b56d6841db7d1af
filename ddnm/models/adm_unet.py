"""The ADM UNet of guided-diffusion (Dhariwal & Nichol 2021), state_dict-compatible.

`UNetModel(...)` takes the keyword arguments of the original class (minus the ones that do not shape
the network: `use_checkpoint`, `use_fp16`, `dims`) and produces the same
`state_dict` keys, shapes and order, so the official checkpoints (`256x256_diffusion*.pt`) load with
`strict=True`. `forward(x, timesteps, y=None)` is the original's: x (B, C, H, W), timesteps (B,)
(float or int, 0 .. 999), y (B,) int64 class labels for a class-conditional model; it returns
(B, out_channels, H, W), with out_channels = 6 for `learn_sigma` models (ε in channels 0..2, the
variance interpolation in 3..5).

Architecture conventions that the checkpoints fix:
    timestep embedding   freqs exp(-ln(10000) k / half), k = 0..half-1; [cos, sin]
    group norm           32 groups, eps 1e-5, evaluated in float32
    ResBlock             scale-shift norm: norm(h) * (1 + scale) + shift, the emb Linear giving
                         [scale, shift]
    resblock_updown      resampling ResBlocks resample both the branch (after norm + SiLU, before
                         the conv) and the skip path (average pool 2x2 / nearest x2)
    attention            legacy layout: qkv split per head first, each head's slice is [q, k, v];
                         q and k both scaled by ch^-1/4
    zero init            the last conv of every ResBlock, attention `proj_out` and the output conv

`unet_from_config` accepts the class keyword arguments (`unet_kwargs`) or those of
guided-diffusion's `create_model` factory (`create_model_kwargs`), ignoring keys that do not shape
the network.

The blocks here are shared by the noisy-image classifier (`adm_classifier.py`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddnm.models.precision import GroupNorm32, check_torso_dtype, convert_convs, softmax32


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding (B,) -> (B, dim): [cos(t f_k), sin(t f_k)], f_k = exp(-ln(P) k / half).

    The frequency table is built in float32 like the reference's; the product is formed in at least
    float32 (float64 timesteps stay float64).
    """
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(-math.log(max_period) * k / half)
    t = timesteps.to(torch.promote_types(timesteps.dtype, torch.float32))
    args = t[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels, eps=1e-5)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of `module` (the reference's init for residual-branch outputs)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def time_embed_mlp(model_channels: int) -> nn.Sequential:
    """Linear(ch, 4ch), SiLU, Linear(4ch, 4ch): keys time_embed.0.*, time_embed.2.*."""
    emb = 4 * model_channels
    return nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then an optional 3x3 conv (key `conv`)."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return x if self.conv is None else self.conv(x)


class Downsample(nn.Module):
    """A 3x3 stride-2 conv (padding 1) or a 2x2 average pool (key `op`)."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op: nn.Module = (
            nn.Conv2d(channels, channels, 3, stride=2, padding=1)
            if use_conv
            else nn.AvgPool2d(kernel_size=2, stride=2)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


@dataclass(frozen=True)
class BlockOptions:
    """What every ResBlock / AttentionBlock of one network shares."""

    emb_channels: int
    dropout: float
    use_scale_shift_norm: bool
    num_head_channels: int
    use_new_attention_order: bool


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding, optionally resampling (up or down)."""

    def __init__(
        self,
        channels: int,
        opts: BlockOptions,
        out_channels: int | None = None,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = opts.use_scale_shift_norm
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        resample: type[nn.Module] = Upsample if up else Downsample
        self.h_upd = resample(channels, False) if self.updown else nn.Identity()
        self.x_upd = resample(channels, False) if self.updown else nn.Identity()
        emb_out = 2 * out_channels if opts.use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(opts.emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(p=opts.dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x (B, C, H, W), emb (B, emb_channels) -> (B, out_channels, H', W')."""
        h = self.in_layers[:-1](x)
        h, x = self.h_upd(h), self.x_upd(x)
        h = self.in_layers[-1](h)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Dot-product attention per (batch * head): q, k, v (N, ch, L) -> (N, ch, L).

    q and k are each scaled by ch^-1/4 (the reference's split of the 1/sqrt(ch) factor); the
    softmax is evaluated in float32.
    """
    scale = 1 / math.sqrt(math.sqrt(q.shape[1]))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    return torch.einsum("bts,bcs->bct", softmax32(weight), v)


def split_heads(qkv: Tensor, num_heads: int, legacy: bool) -> tuple[Tensor, Tensor, Tensor]:
    """qkv (B, 3 * heads * ch, L) -> q, k, v each (B * heads, ch, L).

    legacy: the channels are [head 0: q k v, head 1: q k v, ...]; otherwise [q (all heads), k, v].
    """
    B, width, L = qkv.shape
    ch = width // (3 * num_heads)
    if legacy:
        q, k, v = qkv.reshape(B * num_heads, 3 * ch, L).split(ch, dim=1)
        return q, k, v
    q, k, v = (part.reshape(B * num_heads, ch, L) for part in qkv.chunk(3, dim=1))
    return q, k, v


class AttentionBlock(nn.Module):
    """Self-attention over the spatial positions, with a residual connection."""

    def __init__(self, channels: int, num_heads: int, opts: BlockOptions) -> None:
        super().__init__()
        if opts.num_head_channels != -1:
            if channels % opts.num_head_channels:
                raise ValueError(
                    f"num_head_channels must divide the channels ({channels}), "
                    f"got {opts.num_head_channels}"
                )
            num_heads = channels // opts.num_head_channels
        self.num_heads = num_heads
        self.legacy = not opts.use_new_attention_order
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> (B, C, H, W)."""
        B, C, H, W = x.shape
        x = x.reshape(B, C, H * W)
        q, k, v = split_heads(self.qkv(self.norm(x)), self.num_heads, self.legacy)
        h = self.proj_out(attention(q, k, v).reshape(B, C, H * W))
        return (x + h).reshape(B, C, H, W)


class TimestepEmbedSequential(nn.Sequential):
    """A sequence of blocks; ResBlocks also receive the timestep embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


@dataclass(frozen=True)
class Encoder:
    """The torso's encoder half: input blocks and middle block, plus what the decoder needs."""

    input_blocks: nn.ModuleList
    middle_block: TimestepEmbedSequential
    skip_channels: list[int]  # channels of each input block's output, in order
    channels: int  # channels at the bottleneck
    ds: int  # downsampling factor at the bottleneck


def build_encoder(
    in_channels: int,
    model_channels: int,
    num_res_blocks: int,
    attention_resolutions: Sequence[int],
    channel_mult: Sequence[float],
    num_heads: int,
    resblock_updown: bool,
    conv_resample: bool,
    opts: BlockOptions,
) -> Encoder:
    """Input blocks (a conv, then per level: ResBlocks [+ attention], then a downsampler) and the
    middle block (ResBlock, attention, ResBlock). attention_resolutions are downsampling factors."""
    ch = int(channel_mult[0] * model_channels)
    blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
    skip_channels, ds = [ch], 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            layers: list[nn.Module] = [ResBlock(ch, opts, int(mult * model_channels))]
            ch = int(mult * model_channels)
            if ds in attention_resolutions:
                layers.append(AttentionBlock(ch, num_heads, opts))
            blocks.append(TimestepEmbedSequential(*layers))
            skip_channels.append(ch)
        if level != len(channel_mult) - 1:
            down = (
                ResBlock(ch, opts, down=True) if resblock_updown else Downsample(ch, conv_resample)
            )
            blocks.append(TimestepEmbedSequential(down))
            skip_channels.append(ch)
            ds *= 2
    middle = TimestepEmbedSequential(
        ResBlock(ch, opts), AttentionBlock(ch, num_heads, opts), ResBlock(ch, opts)
    )
    return Encoder(blocks, middle, skip_channels, ch, ds)


def build_decoder(
    encoder: Encoder,
    model_channels: int,
    num_res_blocks: int,
    attention_resolutions: Sequence[int],
    channel_mult: Sequence[float],
    num_heads_upsample: int,
    resblock_updown: bool,
    conv_resample: bool,
    opts: BlockOptions,
) -> tuple[nn.ModuleList, int]:
    """Output blocks mirroring the encoder: per level, from the bottleneck up, num_res_blocks + 1
    ResBlocks, each taking one skip feature map [+ attention], the last followed by an upsampler
    (except at full resolution). Returns the blocks and the channels of the last one."""
    blocks = nn.ModuleList()
    skips, ch, ds = list(encoder.skip_channels), encoder.channels, encoder.ds
    for level, mult in reversed(list(enumerate(channel_mult))):
        for i in range(num_res_blocks + 1):
            out_ch = int(model_channels * mult)
            layers: list[nn.Module] = [ResBlock(ch + skips.pop(), opts, out_ch)]
            ch = out_ch
            if ds in attention_resolutions:
                layers.append(AttentionBlock(ch, num_heads_upsample, opts))
            if level and i == num_res_blocks:
                up = ResBlock(ch, opts, up=True) if resblock_updown else Upsample(ch, conv_resample)
                layers.append(up)
                ds //= 2
            blocks.append(TimestepEmbedSequential(*layers))
    return blocks, ch


class UNetModel(nn.Module):
    """guided-diffusion's UNetModel (see the module docstring for the conventions).

    attention_resolutions: downsampling factors (image_size // pixel resolution) where attention
    sits. num_classes: class-conditional when set (adds `label_emb`).
    """

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
        num_classes: int | None = None,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.model_channels = model_channels
        self.num_classes = num_classes
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        opts = BlockOptions(
            4 * model_channels,
            dropout,
            use_scale_shift_norm,
            num_head_channels,
            use_new_attention_order,
        )
        self.time_embed = time_embed_mlp(model_channels)
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, 4 * model_channels)
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
        self.ds = encoder.ds  # H and W must be multiples of this
        self.output_blocks, ch = build_decoder(
            encoder,
            model_channels,
            num_res_blocks,
            attention_resolutions,
            channel_mult,
            num_heads_upsample,
            resblock_updown,
            conv_resample,
            opts,
        )
        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(nn.Conv2d(encoder.skip_channels[0], out_channels, 3, padding=1)),
        )

    @property
    def torso_dtype(self) -> torch.dtype:
        """The dtype the input, middle and output blocks compute in (their conv weights')."""
        return next(self.input_blocks.parameters()).dtype

    def convert_torso(self, dtype: torch.dtype) -> None:
        """Run the torso in `dtype` (float16: the reference's `convert_to_fp16()`; bfloat16 too;
        float32 undoes it). Group norm, softmax, embeddings and `out` stay in float32."""
        check_torso_dtype(dtype)
        convert_convs([self.input_blocks, self.middle_block, self.output_blocks], dtype)

    def forward(self, x: Tensor, timesteps: Tensor, y: Tensor | None = None) -> Tensor:
        """x (B, C, H, W), timesteps (B,), y (B,) int64 labels iff class-conditional."""
        if (y is None) != (self.num_classes is None):
            raise ValueError("y (class labels) must be given exactly when num_classes is set")
        if x.ndim != 4 or x.shape[2] % self.ds or x.shape[3] % self.ds:
            raise ValueError(
                f"x must have shape (B, C, H, W) with H and W multiples of {self.ds}, "
                f"got {tuple(x.shape)}"
            )
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if y is not None:
            emb = emb + self.label_emb(y)
        h = x.to(self.torso_dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(x.dtype))


# channel_mult that guided-diffusion's factories derive from image_size when it is not given
FACTORY_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}
NUM_CLASSES = 1000


def factory_channel_mult(channel_mult: str | Sequence[float], image_size: int) -> tuple[float, ...]:
    """ "1,1,2" or [1, 1, 2] as given; "" derives it from image_size as the factories do."""
    if isinstance(channel_mult, str) and channel_mult.strip():
        return tuple(int(m) for m in channel_mult.split(","))
    if not isinstance(channel_mult, str) and channel_mult:
        return tuple(channel_mult)
    if image_size not in FACTORY_CHANNEL_MULT:
        raise ValueError(
            f"channel_mult must be given for image_size {image_size} "
            f"(derived only for {sorted(FACTORY_CHANNEL_MULT)})"
        )
    return FACTORY_CHANNEL_MULT[image_size]


def attention_factors(resolutions: str | Sequence[int], image_size: int) -> tuple[int, ...]:
    """Pixel resolutions ("32,16,8" or [32, 16, 8]) -> downsampling factors image_size // r."""
    if isinstance(resolutions, str):
        resolutions = [int(r) for r in resolutions.split(",") if r.strip()]
    return tuple(image_size // int(r) for r in resolutions)


def select_kwargs(cls: type, kwargs: Mapping[str, object]) -> dict[str, object]:
    """The entries of `kwargs` that the constructor of `cls` accepts (the others, such as
    use_checkpoint or use_fp16, do not shape the network)."""
    accepted = inspect.signature(cls).parameters
    return {k: v for k, v in kwargs.items() if k in accepted}


def require(kwargs: Mapping[str, object], *names: str) -> None:
    missing = [n for n in names if n not in kwargs]
    if missing:
        raise ValueError(f"config is missing {missing}; it has {sorted(kwargs)}")


def unet_kwargs_from_factory(kw: Mapping[str, object]) -> dict[str, object]:
    """guided-diffusion `create_model(**kw)` -> `UNetModel` keyword arguments.

    Unknown keys (type, var_type, resamp_with_conv, in_channels, out_channels, diffusion and
    sampling keys) are ignored, as the original factory ignores them; out_channels follows
    learn_sigma (6) and the input is RGB.
    """
    require(kw, "image_size", "num_channels", "num_res_blocks")
    image_size = int(kw["image_size"])  # type: ignore[call-overload]
    return {
        "image_size": image_size,
        "in_channels": 3,
        "model_channels": kw["num_channels"],
        "out_channels": 6 if kw.get("learn_sigma", False) else 3,
        "num_res_blocks": kw["num_res_blocks"],
        "attention_resolutions": attention_factors(
            kw.get("attention_resolutions", "16"),  # type: ignore[arg-type]
            image_size,
        ),
        "dropout": kw.get("dropout", 0.0),
        "channel_mult": factory_channel_mult(kw.get("channel_mult", ""), image_size),  # type: ignore[arg-type]
        "num_classes": NUM_CLASSES if kw.get("class_cond", False) else None,
        "num_heads": kw.get("num_heads", 1),
        "num_head_channels": kw.get("num_head_channels", -1),
        "num_heads_upsample": kw.get("num_heads_upsample", -1),
        "use_scale_shift_norm": kw.get("use_scale_shift_norm", False),
        "resblock_updown": kw.get("resblock_updown", False),
        "use_new_attention_order": kw.get("use_new_attention_order", False),
    }


def unet_from_config(config: Mapping[str, object]) -> UNetModel:
    """Build a `UNetModel` (random init) from any of the config forms the module docstring lists:
    a dict holding `unet_kwargs` or `create_model_kwargs`, or either kind of kwargs itself."""
    if "unet_kwargs" in config:
        kwargs = select_kwargs(UNetModel, config["unet_kwargs"])  # type: ignore[arg-type]
    elif "create_model_kwargs" in config:
        kwargs = unet_kwargs_from_factory(config["create_model_kwargs"])  # type: ignore[arg-type]
    elif "model_channels" in config:
        kwargs = select_kwargs(UNetModel, config)
    else:
        kwargs = unet_kwargs_from_factory(config)
    require(kwargs, "image_size", "in_channels", "model_channels", "out_channels")
    return UNetModel(**kwargs)  # type: ignore[arg-type]

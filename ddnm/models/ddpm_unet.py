"""The DDPM UNet `Model` (Ho et al. 2020, as used by DDIM / SDEdit / DDNM for CelebA-HQ),
state_dict-compatible with `celeba_hq.ckpt`.

`Model(...)` takes the fields of the reference's config (`model.ch`, `model.ch_mult`, ...,
`data.image_size` as `resolution`); `forward(x, t)` maps x (B, in_channels, H, W) and t (B,)
(float or int, 0 .. 999) to ε (B, out_ch, H, W). H = W = resolution.

Conventions the checkpoint fixes:
    timestep embedding   width ch, freqs exp(-k ln(10000) / (half - 1)); [sin, cos]; then
                         Linear(ch, 4ch), swish, Linear(4ch, 4ch)  (keys temb.dense.0/1)
    group norm           32 groups, eps 1e-6
    ResnetBlock          norm, swish, conv3x3, + Linear(swish(temb)), norm, swish, dropout,
                         conv3x3; a 1x1 `nin_shortcut` when the channels change
    AttnBlock            single head, 1x1 convs q, k, v, logits scaled by C^-1/2, `proj_out`
    downsampling         zero pad one row/column at the bottom/right, conv3x3 stride 2, no padding
    upsampling           nearest x2, conv3x3
    decoder              concat([h, skip]) (current features first); `up.0` is the full-resolution
                         level, executed last
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddnm.models.adm_unet import Upsample  # the same layer: nearest x2, then `conv`
from ddnm.models.precision import GroupNorm32, check_torso_dtype, convert_convs, softmax32


def timestep_embedding(timesteps: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding (B,) -> (B, dim): [sin(t f_k), cos(t f_k)], f_k = exp(-k ln(1e4) /
    (half - 1)). Frequencies in float32 as in the reference; the product in at least float32."""
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, dtype=torch.float32, device=timesteps.device)
        * -(math.log(10000) / (half - 1))
    )
    args = timesteps.to(torch.promote_types(timesteps.dtype, torch.float32))[:, None] * freqs
    embedding = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def normalize(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels, eps=1e-6)


class Downsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric: bottom / right only


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float):
        super().__init__()
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        """x (B, C_in, H, W), temb (B, temb_channels) -> (B, C_out, H, W)."""
        h = self.conv1(swish(self.norm1(x)))
        h = h + self.temb_proj(swish(temb)).to(h.dtype)[:, :, None, None]
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Single-head self-attention with a residual: (B, C, H, W) -> (B, C, H, W)."""
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).reshape(B, C, H * W) for conv in (self.q, self.k, self.v))
        weights = softmax32(torch.bmm(q.transpose(1, 2), k) * C**-0.5, dim=2)  # (B, HW_q, HW_k)
        h = torch.bmm(v, weights.transpose(1, 2)).reshape(B, C, H, W)
        return x + self.proj_out(h)


class TimeEmbedding(nn.Module):
    """Sinusoid of width ch, Linear(ch, 4ch), swish, Linear(4ch, 4ch) (keys temb.dense.0/1)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.ch = ch
        self.dense = nn.ModuleList([nn.Linear(ch, 4 * ch), nn.Linear(4 * ch, 4 * ch)])

    def forward(self, t: Tensor) -> Tensor:
        return self.dense[1](swish(self.dense[0](timestep_embedding(t, self.ch))))


class Level(nn.Module):
    """One resolution level: `block` (ResnetBlocks), `attn` (AttnBlocks, possibly empty) and an
    optional resampler registered as `downsample` (encoder) or `upsample` (decoder)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()
        self.resampler_name: str | None = None

    def add_resampler(self, name: str, module: nn.Module) -> None:
        self.add_module(name, module)
        self.resampler_name = name

    def blocks(self, h: Tensor, temb: Tensor, i: int) -> Tensor:
        h = self.block[i](h, temb)
        return self.attn[i](h) if len(self.attn) else h

    def resample(self, h: Tensor) -> Tensor:
        return h if self.resampler_name is None else self.get_submodule(self.resampler_name)(h)


class Middle(nn.Module):
    def __init__(self, channels: int, temb_channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, temb_channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, temb_channels, dropout)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h, temb)), temb)


class Model(nn.Module):
    """The DDPM UNet; see the module docstring. attn_resolutions are pixel resolutions."""

    def __init__(
        self,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        resolution: int,
        dropout: float = 0.0,
        in_channels: int = 3,
        resamp_with_conv: bool = True,
    ) -> None:
        super().__init__()
        self.ch, self.resolution, self.num_res_blocks = ch, resolution, num_res_blocks
        temb_ch = 4 * ch
        self.temb = TimeEmbedding(ch)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_ch_mult = (1, *ch_mult)
        down: list[Level] = []
        res, block_in = resolution, ch
        for i, mult in enumerate(ch_mult):
            level, block_in = Level(), ch * in_ch_mult[i]
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock(block_in, ch * mult, temb_ch, dropout))
                block_in = ch * mult
                if res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != len(ch_mult) - 1:
                level.add_resampler("downsample", Downsample(block_in, resamp_with_conv))
                res //= 2
            down.append(level)
        self.down = nn.ModuleList(down)
        self.levels_down = down  # typed views of self.down / self.up (plain lists: no new keys)
        self.mid = Middle(block_in, temb_ch, dropout)
        up: list[Level] = []
        for i, mult in reversed(list(enumerate(ch_mult))):
            level = Level()
            for j in range(num_res_blocks + 1):
                skip_in = ch * (in_ch_mult[i] if j == num_res_blocks else mult)
                level.block.append(ResnetBlock(block_in + skip_in, ch * mult, temb_ch, dropout))
                block_in = ch * mult
                if res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != 0:
                level.add_resampler("upsample", Upsample(block_in, resamp_with_conv))
                res *= 2
            up.insert(0, level)
        self.up = nn.ModuleList(up)  # up.0 = full resolution, executed last
        self.levels_up = up
        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    @property
    def torso_dtype(self) -> torch.dtype:
        """The dtype conv_in, down, mid and up compute in (their conv weights')."""
        return self.conv_in.weight.dtype

    def convert_torso(self, dtype: torch.dtype) -> None:
        """Run conv_in, down, mid and up in `dtype` (float16 / bfloat16; float32 undoes it), the
        reference's fp16 recipe applied to this network: group norm, softmax, the timestep MLP
        and the output head stay float32."""
        check_torso_dtype(dtype)
        convert_convs([self.conv_in, self.down, self.mid, self.up], dtype)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x (B, in_channels, resolution, resolution), t (B,) -> (B, out_ch, H, W)."""
        if x.shape[2] != self.resolution or x.shape[3] != self.resolution:
            raise ValueError(f"x must be {self.resolution}x{self.resolution}, got {x.shape}")
        temb = self.temb(t)
        hs = [self.conv_in(x.to(self.torso_dtype))]
        for level in self.levels_down:
            for j in range(self.num_res_blocks):
                hs.append(level.blocks(hs[-1], temb, j))
            if level.resampler_name is not None:
                hs.append(level.resample(hs[-1]))
        h = self.mid(hs[-1], temb)
        for level in reversed(self.levels_up):
            for j in range(self.num_res_blocks + 1):
                h = level.blocks(torch.cat([h, hs.pop()], dim=1), temb, j)
            h = level.resample(h)
        return self.conv_out(swish(self.norm_out(h.to(x.dtype))))


def model_from_config(config: Mapping[str, object]) -> Model:
    """Build a `Model` (random init) from the reference's config tree as the fixtures and
    manifests store it: {"model": {...}, "data": {"image_size": N}} (the DDNM yaml), optionally
    under "config"; {"model_config": {...}, "image_size": N} (the manifest); or a flat model dict
    with "image_size". Keys that do not shape the network (type, var_type, ema, ...) are ignored.
    """
    tree: Mapping = config.get("config", config)  # type: ignore[assignment]
    model: Mapping = tree.get("model_config", tree.get("model", tree))
    data: Mapping = tree.get("data", {})
    image_size = tree.get("image_size", data.get("image_size", model.get("image_size")))
    missing = [k for k in ("ch", "out_ch", "ch_mult", "num_res_blocks") if k not in model]
    if missing or image_size is None:
        raise ValueError(
            f"DDPM config needs model ch, out_ch, ch_mult, num_res_blocks and image_size; "
            f"missing {[*missing, *(['image_size'] if image_size is None else [])]}"
        )
    return Model(
        ch=model["ch"],
        out_ch=model["out_ch"],
        ch_mult=tuple(model["ch_mult"]),
        num_res_blocks=model["num_res_blocks"],
        attn_resolutions=tuple(model.get("attn_resolutions", ())),
        resolution=int(image_size),
        dropout=model.get("dropout", 0.0),
        in_channels=model.get("in_channels", 3),
        resamp_with_conv=model.get("resamp_with_conv", True),
    )

"""Restoring images larger than the network, window by window, with the same run and drivers.

Two ways, both over windows of the network's native side (a plan gives their boxes and, for
Mask-Shift, the waves; `contract.tiling.plan_tiles` makes one):

    mask_shift_run   the paper's Mask-Shift: each window is a DDNM run of the chain restricted to
                     it (`restrict`, with y the matching block), its overlap with finished
                     windows pinned at every step (`sampling.Pin`), so neighbours agree and no
                     seam appears; the windows of one wave step in `lockstep`
    fused_run        one run on the whole canvas with the global operator: at every step the
                     network sees all windows (in chunks), their ε are blended into one
                     canvas-sized ε (overlap-weighted), and the range-space correction is done
                     once, exactly, for any operator with an exact pseudo-inverse

Each window of Mask-Shift takes its own child generator (window index k, `spawn`), and the pinned
pixels of a window are those of its earlier overlapping windows in either order, so wavefront and
one-by-one order give the same image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import singledispatch
from typing import Protocol

import torch
from torch import Tensor

from ddnm.operators.base import LinearOperator
from ddnm.operators.colorization import Colorization
from ddnm.operators.composition import KroneckerProduct, SeparableChain
from ddnm.operators.identity import Identity
from ddnm.operators.inpainting import Inpainting
from ddnm.operators.masked_pooling import MaskedPooling
from ddnm.operators.super_resolution import SuperResolution
from ddnm.sampling import Pin, Run, SamplerOptions, StepInfo, lockstep, run, spawn
from ddnm.sampling.calls import NetCall, join
from ddnm.schedules import Schedule

Box = tuple[int, int, int, int]  # (top, bottom, left, right) in x's pixels, half-open


class Layout(Protocol):
    """Window boxes (row-major, all of one side) and the waves of Mask-Shift."""

    @property
    def boxes(self) -> tuple[Box, ...]: ...

    @property
    def waves(self) -> tuple[tuple[int, ...], ...]: ...


@dataclass(frozen=True)
class OneByOne:
    """The windows of `layout` one per wave, in row-major order (the first `count` of them, all
    when None): Mask-Shift without wavefront batching, which gives the same image."""

    layout: Layout
    count: int | None = None

    @property
    def boxes(self) -> tuple[Box, ...]:
        return self.layout.boxes

    @property
    def waves(self) -> tuple[tuple[int, ...], ...]:
        count = len(self.layout.boxes) if self.count is None else self.count
        return tuple((k,) for k in range(count))


class NotTileable(ValueError):
    """An operator that cannot be restricted exactly to a window."""


@singledispatch
def restrict(operator: LinearOperator, box: Box) -> LinearOperator:
    """The operator acting on the window `box` of x only, exactly: y's block of the window
    depends on the window's pixels alone. Registered per operator; others raise NotTileable."""
    raise NotTileable(
        f"{type(operator).__name__} mixes pixels across any window border, so it cannot be "
        "restricted to a window; restore it with the fused windows instead"
    )


@restrict.register
def _(operator: Colorization | Identity, box: Box) -> LinearOperator:
    return operator


@restrict.register
def _(operator: SuperResolution, box: Box) -> LinearOperator:
    if operator.filter != "box":
        raise NotTileable("bicubic downsampling reaches across window borders; use fused windows")
    return operator


@restrict.register
def _(operator: SeparableChain, box: Box) -> LinearOperator:
    for part in operator.parts:
        restrict(part, box)
    return operator


@restrict.register
def _(operator: Inpainting, box: Box) -> LinearOperator:
    return Inpainting(operator.mask[..., box[0] : box[1], box[2] : box[3]])


@restrict.register
def _(operator: MaskedPooling, box: Box) -> LinearOperator:
    return MaskedPooling(operator.mask[..., box[0] : box[1], box[2] : box[3]], operator.factor)


@restrict.register
def _(operator: KroneckerProduct, box: Box) -> LinearOperator:
    return KroneckerProduct(operator.channel, restrict(operator.spatial, box))  # type: ignore[arg-type]


def window_y(y: Tensor, box: Box, factor: int) -> Tensor:
    """The block of y (B, C, H/f, W/f) that the window `box` of x (pixels, multiples of f)
    is observed in."""
    top, bottom, left, right = (v // factor for v in box)
    return y[..., top:bottom, left:right]


def mask_shift_run(
    schedule: Schedule,
    operator: LinearOperator,
    y: Tensor,
    options: SamplerOptions,
    layout: Layout,
    factor: int,
    *,
    generator: torch.Generator | None = None,
    labels: int | Tensor | None = None,
    scales: float | Tensor | None = None,
    callback: Callable[[StepInfo], None] | None = None,
) -> Run:
    """Mask-Shift over the windows of `layout` (see the module docstring): y (B, C', H/f, W/f)
    of the canvas, `factor` f the chain's downsampling factor. Returns x (B, C, H, W), exactly
    each window's own result on its pixels. The callback counts steps over all waves."""
    canvas = torch.zeros(y.shape[0], *operator.x_shape(y), dtype=y.dtype, device=y.device)
    done = torch.zeros(1, 1, *canvas.shape[2:], dtype=torch.bool, device=y.device)
    children = spawn(generator, len(layout.boxes))
    restricted = [restrict(operator, box) for box in layout.boxes]  # refused before any step
    for w, wave in enumerate(layout.waves):
        runs = []
        for k in wave:
            top, bottom, left, right = layout.boxes[k]
            window = (..., slice(top, bottom), slice(left, right))
            pin = Pin(done[window].clone(), canvas[window].clone())  # the finished neighbours
            relay = _wave_progress(callback, w, len(layout.waves)) if k == wave[0] else None
            runs.append(
                run(
                    schedule,
                    restricted[k],
                    window_y(y, layout.boxes[k], factor),
                    options,
                    generator=children[k],
                    labels=labels,
                    scales=scales,
                    pin=pin,
                    callback=relay,
                )
            )
        results = yield from lockstep(runs)
        for k, x in zip(wave, results, strict=True):
            top, bottom, left, right = layout.boxes[k]
            canvas[..., top:bottom, left:right] = x
            done[..., top:bottom, left:right] = True
    return canvas


def _wave_progress(
    callback: Callable[[StepInfo], None] | None, wave: int, waves: int
) -> Callable[[StepInfo], None] | None:
    """The callback of a wave's first window, its steps counted over all waves."""
    if callback is None:
        return None

    def relay(info: StepInfo) -> None:
        callback(replace(info, step=wave * info.total + info.step, total=waves * info.total))

    return relay


def blend_weights(window: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(window, window) weights of a window's ε in the blend: a tent, largest at the centre and
    positive to the border, so overlapping windows hand over smoothly."""
    ramp = torch.arange(window, dtype=dtype, device=device)
    tent = torch.minimum(ramp + 1, window - ramp) / ((window + 1) / 2)
    return tent[:, None] * tent[None, :]


def fused_run(inner: Run, boxes: Sequence[Box], chunk: int = 64) -> Run:
    """`inner`, a run on the whole canvas, with each of its requests answered by the network on
    the windows `boxes` (at most `chunk` windows per request) and their ε blended."""
    try:
        call = next(inner)
        weights = blend(boxes, call.x_t)  # the same for every step of the run
        while True:
            eps = yield from _blended_eps(call, boxes, chunk, weights)
            call = inner.send(eps)
    except StopIteration as done:
        return done.value


def blend(boxes: Sequence[Box], like: Tensor) -> tuple[Tensor, Tensor]:
    """(w, Σ_k w): a window's weights (n, n) and their sum over the windows covering each pixel
    of the canvas (1, 1, H, W), in like's (B, C, H, W) dtype and device."""
    weight = blend_weights(boxes[0][1] - boxes[0][0], like.dtype, like.device)
    total = torch.zeros_like(like[:1, :1])
    for top, bottom, left, right in boxes:
        total[..., top:bottom, left:right] += weight
    return weight, total


def _blended_eps(
    call: NetCall, boxes: Sequence[Box], chunk: int, weights: tuple[Tensor, Tensor]
) -> Run:
    """ε of the canvas request `call`: Σ_k w ε_k / Σ_k w over the windows k covering a pixel."""
    weight, total = weights
    eps = torch.zeros_like(call.x_t)
    pieces = [(b, box) for b in range(call.batch) for box in boxes]
    for start in range(0, len(pieces), chunk):
        part = pieces[start : start + chunk]
        answer = yield join([_crop(call, b, box) for b, box in part])
        for (b, (top, bottom, left, right)), e in zip(part, answer, strict=True):
            eps[b, :, top:bottom, left:right] += weight * e
    return eps / total


def _crop(call: NetCall, b: int, box: Box) -> NetCall:
    top, bottom, left, right = box
    pick = slice(b, b + 1)
    return NetCall(
        call.x_t[pick, :, top:bottom, left:right],
        call.t[pick],
        None if call.labels is None else call.labels[pick],
        None if call.scales is None else call.scales[pick],
    )

"""Chains of degradations: `compose(A1, A2, …)` applies A1 first, then A2, … (the order in which
the degradations hit the clean image), e.g. old photo = compose(Inpainting(mask), Colorization(),
SuperResolution(4)).

(A_k ⋯ A_1)⁺ = A_1⁺ ⋯ A_k⁺ holds only under conditions, which e.g. the old-photo chain breaks when
the mask cuts pooling blocks. `compose` therefore never multiplies pseudo-inverses blindly: it
rewrites the chain into one operator whose exact pseudo-inverse and SVD are known.

1. Colorization acts on channels only; every other operator acts on pixels only, the same way on
   every channel. They commute, and the chain is the Kronecker product w ⊗ S of the colorization
   and the spatial chain S, whose SVD is the product of the two SVDs and whose pseudo-inverse is
   w⁺ ⊗ S⁺ (`KroneckerProduct`).
2. The spatial chain S:
   - separable operators (super-resolution, deblurring): the 1-D matrices multiply per axis
     (`SeparableChain`, SVD per axis);
   - inpainting and box downsampling: a mask after pooling equals pooling after the mask upsampled
     (nearest), masks multiply and factors multiply, so the chain is `MaskedPooling`, `Inpainting`
     or `SuperResolution`;
   - a single operator stays as it is.
Any other chain becomes a `Composition` with exact_pinv = False and a `description` of why: its
A_pinv is the reverse product of the parts' pseudo-inverses, which the sampler refuses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ddnm.operators.base import ImageShape, LinearOperator, SVDOperator
from ddnm.operators.colorization import Colorization
from ddnm.operators.identity import Identity
from ddnm.operators.inpainting import Inpainting
from ddnm.operators.masked_pooling import MaskedPooling
from ddnm.operators.separable import SeparableOperator, axis_factors
from ddnm.operators.super_resolution import SuperResolution


@dataclass(frozen=True)
class SeparableChain(SeparableOperator):
    """Separable operators applied in order: M_a = M_a^(k) ⋯ M_a^(1) per axis.

    Truncated again with the largest cutoff of its parts (a chain with a `Deblur` is, like the
    Deblur itself, defined through its truncated SVD: within cutoff · ‖M_0‖₂ ‖M_1‖₂ · ‖x‖ of
    applying the parts in order).
    """

    parts: tuple[SeparableOperator, ...]
    factor: int = field(init=False)
    cutoff: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "factor", math.prod(p.factor for p in self.parts))
        object.__setattr__(self, "cutoff", max(p.cutoff for p in self.parts))

    def axis_matrix(self, n: int, axis: int) -> Tensor:
        M = torch.eye(n, dtype=torch.float64)
        for part in self.parts:
            M = axis_factors(part, M.shape[0], axis).M @ M
        return M


@dataclass(frozen=True)
class KroneckerProduct(SVDOperator):
    """A colorization and a spatial operator in either order: A = w ⊗ S, y = S(Σ_c w_c x_c)."""

    channel: Colorization
    spatial: SVDOperator

    def A(self, x: Tensor) -> Tensor:
        return self.spatial.A(self.channel.A(x))

    def A_pinv(self, y: Tensor) -> Tensor:
        self.x_shape(y)
        return self.channel.A_pinv(self.spatial.A_pinv(y))

    def V_t(self, x: Tensor) -> Tensor:
        return self.channel.V_t(self.spatial.V_t(x))

    def V(self, c: Tensor) -> Tensor:
        return self.spatial.V(self.channel.V(c))

    def U_t(self, y: Tensor) -> Tensor:
        return self.channel.U_t(self.spatial.U_t(y))

    def U(self, c: Tensor) -> Tensor:
        return self.spatial.U(self.channel.U(c))

    def singular_values(self, shape: ImageShape) -> Tensor:
        s_spatial = self.spatial.singular_values((1, *shape[1:]))
        return self.channel.singular_values(shape) * s_spatial

    def x_shape(self, y: Tensor) -> ImageShape:
        if y.ndim < 3 or y.shape[1] != 1:
            raise ValueError(
                f"y must have one channel (the gray value) in the layout of "
                f"{type(self.spatial).__name__}, got shape {tuple(y.shape)}"
            )
        return (len(self.channel.weights), *self.spatial.x_shape(y)[1:])


@dataclass(frozen=True, eq=False)
class Composition(LinearOperator):
    """A chain without a known exact pseudo-inverse: A_pinv is the reverse product (not exact)."""

    parts: tuple[LinearOperator, ...]
    description: str
    exact_pinv = False

    def A(self, x: Tensor) -> Tensor:
        for part in self.parts:
            x = part.A(x)
        return x

    def A_pinv(self, y: Tensor) -> Tensor:
        for part in reversed(self.parts):
            y = part.A_pinv(y)
        return y

    def x_shape(self, y: Tensor) -> ImageShape:
        return tuple(self.A_pinv(y).shape[1:])  # type: ignore[return-value]


def compose(*operators: LinearOperator) -> LinearOperator:
    """The chain applying operators[0] first: an exact operator where one is known (see above)."""
    if not operators or not all(isinstance(op, LinearOperator) for op in operators):
        raise ValueError(f"compose needs one or more LinearOperators, got {operators!r}")
    parts = [p for op in operators for p in flatten(op) if not isinstance(p, Identity)]
    channel = [p for p in parts if isinstance(p, Colorization)]
    spatial = fuse_spatial([p for p in parts if not isinstance(p, Colorization)])
    if len(channel) > 1 or spatial is None or (channel and not isinstance(spatial, SVDOperator)):
        names = " → ".join(type(p).__name__ for p in parts)
        return Composition(
            tuple(parts),
            f"no exact pseudo-inverse is known for the chain {names}; A_pinv is the reverse "
            "product of the parts' pseudo-inverses, exact only under conditions not checked here",
        )
    if not channel:
        return spatial
    if isinstance(spatial, Identity):
        return channel[0]
    return KroneckerProduct(channel[0], spatial)  # type: ignore[arg-type]


def flatten(op: LinearOperator) -> list[LinearOperator]:
    """The parts of an operator built by `compose`, in order; [op] for a single degradation."""
    if isinstance(op, Composition | SeparableChain):
        return list(op.parts)
    if isinstance(op, KroneckerProduct):
        return [op.channel, *flatten(op.spatial)]
    if isinstance(op, MaskedPooling):
        return [Inpainting(op.mask), SuperResolution(op.factor)]
    return [op]


def fuse_spatial(parts: list[LinearOperator]) -> LinearOperator | None:
    """One operator for a chain of spatial operators, or None when none is known."""
    if not parts:
        return Identity()
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p, SeparableOperator) for p in parts):
        return SeparableChain(tuple(parts))  # type: ignore[arg-type]
    if all(isinstance(p, Inpainting) or is_box(p) for p in parts):
        return pool_known_pixels(parts)
    return None


def is_box(op: LinearOperator) -> bool:
    return isinstance(op, SuperResolution) and op.filter == "box"


def pool_known_pixels(parts: list[LinearOperator]) -> LinearOperator:
    """Inpainting and box downsampling in any order -> pooling of the known pixels."""
    mask: Tensor | None = None
    factor = 1
    for part in parts:
        if isinstance(part, SuperResolution):
            factor *= part.factor
            continue
        assert isinstance(part, Inpainting)
        m = part.mask.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
        if mask is not None:
            if m.shape[-2:] != mask.shape[-2:] or 1 not in (m.shape[0], mask.shape[0]):
                raise ValueError(
                    f"the masks of the chain do not line up: {tuple(m.shape)} (upsampled by "
                    f"{factor}) after {tuple(mask.shape)}"
                )
            m = m * mask
        mask = m
    if mask is None:
        return SuperResolution(factor)
    return Inpainting(mask) if factor == 1 else MaskedPooling(mask, factor)

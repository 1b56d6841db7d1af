"""Linear degradation operators y = A x and their pseudo-inverses.

Conventions (shared by every operator in this package):
    x       (B, C, H, W) image in [-1, 1] (C = 3 for the networks shipped).
    y       the measurement, in image layout wherever it is an image (see each operator).
    A(x)    the degradation; A_pinv(y) its Moore-Penrose pseudo-inverse A⁺.

Operators are immutable: every parameter (mask, kernel, permutation) is fixed at construction and
methods never store state. Methods accept tensors on any device and dtype and move their own
constant tensors to match.

SVD form (`SVDOperator`): A = U diag(s) Vᵀ with the coefficients laid out in the *spectral layout*,
a tensor of x's shape (B, C, H, W). `V_t(x)` maps an image to its coefficients, `V(c)` back (V is
orthogonal); `U_t(y)` maps a measurement into the spectral layout (zeros where s = 0) and `U(c)`
back. `singular_values(shape)` is broadcastable to (C, H, W) with zeros on the null space (to
(B, C, H, W) for an operator with per-sample parameters, e.g. a batch of inpainting masks). A and
A_pinv follow from these (Eq. 3 of the DDNM paper: A⁺ = V Σ⁺ Uᵀ), and DDNM+ uses them to scale the
range-space correction per singular value (appendix I).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

ImageShape = tuple[int, int, int]  # (C, H, W)


class LinearOperator(ABC):
    """A linear degradation y = A x with its pseudo-inverse.

    `exact_pinv` is False only for operators whose A_pinv is a convenient approximation rather than
    the Moore-Penrose pseudo-inverse; the sampler refuses them (DDNM's guarantee A x̂ = y needs
    A A⁺ A = A).
    """

    exact_pinv: bool = True

    @abstractmethod
    def A(self, x: Tensor) -> Tensor:
        """Degrade. x: (B, C, H, W) -> y in this operator's measurement layout."""

    @abstractmethod
    def A_pinv(self, y: Tensor) -> Tensor:
        """Pseudo-inverse. y in measurement layout -> (B, C, H, W)."""

    @abstractmethod
    def x_shape(self, y: Tensor) -> ImageShape:
        """(C, H, W) of the image that the measurement y was taken of."""

    def project(self, x: Tensor) -> Tensor:
        """Range-space projection A⁺A x (shape of x)."""
        return self.A_pinv(self.A(x))


class SVDOperator(LinearOperator):
    """An operator given by its singular value decomposition A = U diag(s) Vᵀ."""

    @abstractmethod
    def V_t(self, x: Tensor) -> Tensor:
        """(B, C, H, W) image -> (B, C, H, W) coefficients in the spectral layout."""

    @abstractmethod
    def V(self, c: Tensor) -> Tensor:
        """(B, C, H, W) coefficients -> (B, C, H, W) image; inverse of V_t (V is orthogonal)."""

    @abstractmethod
    def U_t(self, y: Tensor) -> Tensor:
        """Measurement -> (B, C, H, W) spectral layout, zeros where s = 0."""

    @abstractmethod
    def U(self, c: Tensor) -> Tensor:
        """(B, C, H, W) spectral layout -> measurement (entries where s = 0 are ignored)."""

    @abstractmethod
    def singular_values(self, shape: ImageShape) -> Tensor:
        """Singular values s >= 0 for an image of `shape`, broadcastable to (C, H, W) (above)."""

    def A(self, x: Tensor) -> Tensor:
        c = self.V_t(x)  # checks x's shape first
        s = self.singular_values(tuple(x.shape[1:])).to(x)  # type: ignore[arg-type]
        return self.U(s * c)

    def A_pinv(self, y: Tensor) -> Tensor:
        c = self.U_t(y)
        s = self.singular_values(self.x_shape(y)).to(c)
        return self.V(c * pinv_values(s))


def pinv_values(s: Tensor) -> Tensor:
    """Σ⁺ entries: 1 / s where s > 0, else 0."""
    return torch.where(s > 0, 1.0 / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))

"""Degradation operators y = A x with pseudo-inverses and SVD forms (see `base` for conventions)."""

from ddnm.operators.base import LinearOperator, SVDOperator
from ddnm.operators.colorization import Colorization
from ddnm.operators.identity import Identity
from ddnm.operators.inpainting import Inpainting
from ddnm.operators.super_resolution import SuperResolution

__all__ = [
    "Colorization",
    "Identity",
    "Inpainting",
    "LinearOperator",
    "SVDOperator",
    "SuperResolution",
]

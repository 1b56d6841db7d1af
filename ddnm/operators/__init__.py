"""Degradation operators y = A x with pseudo-inverses and SVD forms (see `base` for conventions).

One degradation per module; `compose` builds chains with exact pseudo-inverses where one is known
and flags the others (exact_pinv = False); `measure` adds the measurement noise σ_y.
"""

from ddnm.operators.base import LinearOperator, SVDOperator
from ddnm.operators.colorization import Colorization
from ddnm.operators.composition import Composition, KroneckerProduct, SeparableChain, compose
from ddnm.operators.compressed_sensing import CompressedSensing
from ddnm.operators.deblur import (
    Deblur,
    anisotropic_gaussian_kernel,
    gaussian_kernel,
    uniform_kernel,
)
from ddnm.operators.identity import Identity
from ddnm.operators.inpainting import Inpainting
from ddnm.operators.masked_pooling import MaskedPooling
from ddnm.operators.measure import measure
from ddnm.operators.super_resolution import SuperResolution

__all__ = [
    "Colorization",
    "Composition",
    "CompressedSensing",
    "Deblur",
    "Identity",
    "Inpainting",
    "KroneckerProduct",
    "LinearOperator",
    "MaskedPooling",
    "SVDOperator",
    "SeparableChain",
    "SuperResolution",
    "anisotropic_gaussian_kernel",
    "compose",
    "gaussian_kernel",
    "measure",
    "uniform_kernel",
]

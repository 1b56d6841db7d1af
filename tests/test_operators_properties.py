"""Property tests: the pseudo-inverse of every operator equals the pseudo-inverse of its dense
matrix, on random shapes, factors, masks, kernels and chains (hypothesis)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from ddnm.operators import (
    Colorization,
    CompressedSensing,
    Deblur,
    Identity,
    Inpainting,
    LinearOperator,
    SuperResolution,
    SVDOperator,
    anisotropic_gaussian_kernel,
    compose,
)
from ddnm.operators.base import pinv_values
from tests.test_operators import dense

PROPERTY = settings(max_examples=25, deadline=None)


def assert_exact(op: LinearOperator, shape: tuple[int, int, int]) -> None:
    """A⁺ is the Moore-Penrose pseudo-inverse of A (float64), and the SVD form reproduces both."""
    assert op.exact_pinv
    A = dense(op.A, shape)
    y_shape = tuple(op.A(torch.zeros(1, *shape, dtype=torch.float64)).shape[1:])
    A_pinv = dense(op.A_pinv, y_shape)
    expected = torch.linalg.pinv(A, rtol=1e-9)
    assert torch.allclose(A_pinv, expected, atol=1e-8 * float(expected.abs().max()))
    if isinstance(op, SVDOperator):
        s = op.singular_values(shape).double()
        assert torch.allclose(dense(lambda x: op.U(s * op.V_t(x)), shape), A, atol=1e-10)
        svd_pinv = dense(lambda y: op.V(pinv_values(s) * op.U_t(y)), y_shape)
        assert torch.allclose(svd_pinv, A_pinv, atol=1e-8 * float(expected.abs().max()))


def masks(H: int, W: int) -> st.SearchStrategy[Tensor]:
    bits = st.lists(st.integers(0, 1), min_size=H * W, max_size=H * W)
    return bits.map(lambda b: torch.tensor(b).reshape(H, W))


@PROPERTY
@given(
    factor=st.integers(1, 4),
    h=st.integers(1, 3),
    w=st.integers(1, 3),
    channels=st.integers(1, 3),
    bicubic=st.booleans(),
)
def test_super_resolution(factor, h, w, channels, bicubic):
    op = SuperResolution(factor, "bicubic" if bicubic else "box")
    assert_exact(op, (channels, h * factor, w * factor))


@PROPERTY
@given(
    sigma_rows=st.floats(0.3, 2.5),
    sigma_cols=st.floats(0.3, 2.5),
    H=st.integers(2, 10),
    W=st.integers(2, 10),
    cutoff=st.floats(1e-3, 0.3),
)
def test_deblur(sigma_rows, sigma_cols, H, W, cutoff):
    op = Deblur(anisotropic_gaussian_kernel(sigma_rows, sigma_cols), cutoff=cutoff)
    assert_exact(op, (2, H, W))


@PROPERTY
@given(
    log_h=st.integers(0, 3),
    log_w=st.integers(0, 3),
    ratio=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**31),
)
def test_walsh_hadamard(log_h, log_w, ratio, seed):
    H, W = 2**log_h, 2**log_w
    ratio = max(ratio, 1 / (H * W))
    assert_exact(CompressedSensing(ratio, image_size=(H, W), seed=seed), (2, H, W))


@PROPERTY
@given(
    log_b=st.integers(0, 2),
    nh=st.integers(1, 3),
    nw=st.integers(1, 2),
    ratio=st.floats(0.0625, 1.0),
)
def test_block_compressed_sensing(log_b, nh, nw, ratio):
    b = 2**log_b
    ratio = max(ratio, 1 / b**2)
    assert_exact(CompressedSensing(ratio, "block", block_size=b), (1, nh * b, nw * b))


@PROPERTY
@given(data=st.data(), factor=st.integers(1, 3), h=st.integers(1, 3), w=st.integers(1, 3))
def test_old_photo_with_any_mask(data, factor, h, w):
    mask = data.draw(masks(h * factor, w * factor))
    op = compose(Inpainting(mask), Colorization(), SuperResolution(factor))
    assert_exact(op, (3, h * factor, w * factor))


PARTS = st.sampled_from(["mask", "box2", "gray", "identity", "bicubic2", "blur", "cs"])


@PROPERTY
@given(data=st.data(), names=st.lists(PARTS, min_size=1, max_size=4))
def test_compose_is_exact_or_flagged(data, names):
    """Any chain: compose returns an operator whose pinv is exact, or one flagged as not exact;
    chains of masks, box downsampling, grayscale and identities are always exact."""
    size = 8
    parts: list[LinearOperator] = []
    for name in names:
        if name == "mask":
            parts.append(Inpainting(data.draw(masks(size, size))))
        elif name in ("box2", "bicubic2") and size % 2 == 0:
            parts.append(SuperResolution(2, "box" if name == "box2" else "bicubic"))
            size //= 2
        elif name == "gray" and not any(isinstance(p, Colorization) for p in parts):
            parts.append(Colorization())
        elif name == "blur":
            parts.append(Deblur(anisotropic_gaussian_kernel(0.8, 1.3)))
        elif name == "cs" and size in (2, 4, 8):
            parts.append(CompressedSensing(0.5, image_size=size))
            break  # its measurement is no image: nothing spatial can follow
        else:
            parts.append(Identity())
    op = compose(*parts)
    simple = all(
        isinstance(p, Inpainting | Colorization | Identity) or p == SuperResolution(2)
        for p in parts
    )
    if op.exact_pinv:
        assert_exact(op, (3, 8, 8))
    assert op.exact_pinv or not simple

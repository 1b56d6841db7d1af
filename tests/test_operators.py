"""The operator contract, parametrised over every degradation and chain, plus per-operator checks.

Contract (issue 2): the four Penrose conditions on random inputs, A(A⁺ y) = y for y in the range,
and the SVD form U diag(s) Vᵀ reproducing A with V orthogonal; A⁺ is also compared with the
pseudo-inverse of the dense matrix of A. Goldens: A applied to the reference `x_orig` gives the
stored `y` once that is reshaped into this package's image layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from ddnm.operators import (
    Colorization,
    Composition,
    CompressedSensing,
    Deblur,
    Identity,
    Inpainting,
    KroneckerProduct,
    LinearOperator,
    MaskedPooling,
    SeparableChain,
    SuperResolution,
    SVDOperator,
    anisotropic_gaussian_kernel,
    compose,
    gaussian_kernel,
    measure,
    uniform_kernel,
)
from ddnm.operators.base import pinv_values
from ddnm.operators.compressed_sensing import fwht
from ddnm.operators.super_resolution import bicubic_matrix, bicubic_taps

GOLDEN_WEIGHTS = (0.3333, 0.3334, 0.3333)
TOL = {torch.float64: 1e-10, torch.float32: 2e-6}


def random_mask(H: int, W: int, known: float, seed: int, batch: int | None = None) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (H, W) if batch is None else (batch, 1, H, W)
    return (torch.rand(shape, generator=g) < known).long()


# name -> (operator factory, x shape); factories so that every test gets a fresh object
CASES: dict[str, tuple[Callable[[], LinearOperator], tuple[int, int, int, int]]] = {
    "identity": (Identity, (2, 3, 4, 6)),
    "sr_box_2": (lambda: SuperResolution(2), (2, 3, 8, 6)),
    "sr_box_3": (lambda: SuperResolution(3), (1, 3, 6, 9)),
    "sr_box_4": (lambda: SuperResolution(4), (1, 3, 8, 8)),
    "sr_bicubic_2": (lambda: SuperResolution(2, "bicubic"), (2, 3, 8, 6)),
    "sr_bicubic_3": (lambda: SuperResolution(3, "bicubic"), (1, 3, 9, 6)),
    "sr_bicubic_4": (lambda: SuperResolution(4, "bicubic"), (1, 3, 8, 4)),
    "colorization": (Colorization, (2, 3, 5, 4)),
    "colorization_golden": (lambda: Colorization(GOLDEN_WEIGHTS), (1, 3, 4, 4)),
    "colorization_4ch": (lambda: Colorization((0.1, -0.5, 0.2, 0.7)), (1, 4, 3, 3)),
    "inpainting": (lambda: Inpainting(random_mask(6, 5, 0.6, seed=1)), (2, 3, 6, 5)),
    "inpainting_batch": (lambda: Inpainting(random_mask(6, 5, 0.5, 2, batch=2)), (2, 3, 6, 5)),
    "deblur_gaussian": (lambda: Deblur(gaussian_kernel(1.0)), (2, 3, 8, 6)),
    "deblur_uniform": (lambda: Deblur(uniform_kernel(3)), (1, 3, 7, 9)),
    "deblur_reflect": (
        lambda: Deblur(gaussian_kernel(1.0), boundary="reflect", cutoff=1e-3),
        (1, 3, 9, 7),
    ),
    "deblur_anisotropic": (
        lambda: Deblur(anisotropic_gaussian_kernel(0.7, 2.0), cutoff=1e-3),
        (1, 3, 8, 10),
    ),
    "cs_walsh_hadamard": (lambda: CompressedSensing(0.4, image_size=8), (2, 3, 8, 8)),
    "cs_walsh_hadamard_4x8": (lambda: CompressedSensing(0.5, image_size=(4, 8)), (1, 3, 4, 8)),
    "cs_block": (lambda: CompressedSensing(0.3, "block", block_size=4), (2, 3, 8, 12)),
    "old_photo": (lambda: old_photo(cuts_blocks_mask()), (1, 3, 8, 8)),
    "old_photo_batch": (lambda: old_photo(random_mask(8, 8, 0.5, 3, batch=2)), (2, 3, 8, 8)),
    "masked_pooling_3": (lambda: MaskedPooling(random_mask(6, 9, 0.4, 4), 3), (1, 2, 6, 9)),
    "gray_bicubic_sr": (
        lambda: compose(Colorization(), SuperResolution(2, "bicubic")),
        (1, 3, 8, 4),
    ),
    "blur_sr": (lambda: compose(Deblur(gaussian_kernel(1.0)), SuperResolution(2)), (1, 3, 8, 8)),
    "blur_reflect_sr": (
        lambda: compose(Deblur(gaussian_kernel(1.0), boundary="reflect"), SuperResolution(2)),
        (1, 3, 8, 8),
    ),
    "sr_then_mask": (
        lambda: compose(SuperResolution(2), Inpainting(random_mask(4, 3, 0.5, 5))),
        (1, 3, 8, 6),
    ),
    # damage on the observed print: the mask at y's resolution, after the downsampling and grey
    "damaged_print": (
        lambda: compose(SuperResolution(2), Colorization(), Inpainting(random_mask(4, 3, 0.6, 6))),
        (1, 3, 8, 6),
    ),
    "damaged_grey_print": (
        lambda: compose(Colorization(), Inpainting(random_mask(8, 6, 0.6, 7))),
        (2, 3, 8, 6),
    ),
    "gray_cs": (
        lambda: compose(CompressedSensing(0.5, image_size=4), Colorization()),
        (1, 3, 4, 4),
    ),
}
# cases whose measurement layout does not depend on the batch: the dense matrix test runs on them
DENSE = [name for name in CASES if not name.endswith("_batch")]


def cuts_blocks_mask() -> Tensor:
    """An 8 × 8 mask cutting 2 × 2 pooling blocks, with one block that has no known pixel."""
    mask = random_mask(8, 8, 0.6, seed=6)
    mask[2:4, 4:6] = 0  # block (1, 2): nothing known
    mask[0:2, 0:2] = torch.tensor([[1, 0], [0, 0]])  # block (0, 0): one known pixel
    return mask


def old_photo(mask: Tensor) -> LinearOperator:
    return compose(Inpainting(mask), Colorization(), SuperResolution(2))


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> tuple[LinearOperator, tuple[int, int, int, int]]:
    factory, shape = CASES[request.param]
    return factory(), shape


def randn(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, seed: int) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def tolerance(op: LinearOperator, shape: tuple[int, ...], dtype: torch.dtype) -> float:
    """TOL[dtype], scaled up for ill-conditioned operators (rounding errors grow with s_max / s_min:
    float32 errors stay below 1e-7 · √κ in practice, so κ / 100 leaves a margin of ~10x)."""
    if not isinstance(op, SVDOperator):
        return TOL[dtype]
    s = op.singular_values(shape[1:]).double()
    kappa = float(s.max() / s[s > 0].min())
    return TOL[dtype] * max(1.0, kappa / 100)


def close(a: Tensor, b: Tensor, tol: float) -> bool:
    """‖a - b‖ <= tol · ‖b‖."""
    return float((a - b).norm()) <= tol * max(float(b.norm()), 1e-12)


def dot(a: Tensor, b: Tensor) -> float:
    return float((a * b).sum())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_penrose_conditions(case, dtype):
    op, shape = case
    tol = tolerance(op, shape, dtype)
    x, z = randn(shape, dtype, 0), randn(shape, dtype, 1)
    y_shape = op.A(x).shape
    u, v = randn(y_shape, dtype, 2), randn(y_shape, dtype, 3)
    A, Ap = op.A, op.A_pinv
    assert close(A(Ap(A(x))), A(x), tol)  # A A⁺ A = A
    assert close(Ap(A(Ap(u))), Ap(u), tol)  # A⁺ A A⁺ = A⁺
    scale = float(u.norm() * v.norm())
    assert abs(dot(A(Ap(u)), v) - dot(u, A(Ap(v)))) <= tol * scale  # (A A⁺)ᵀ = A A⁺
    scale = float(x.norm() * z.norm())
    assert abs(dot(Ap(A(x)), z) - dot(x, Ap(A(z)))) <= tol * scale  # (A⁺ A)ᵀ = A⁺ A


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_consistency_on_the_range(case, dtype):
    op, shape = case
    y = op.A(randn(shape, dtype, 4))
    assert tuple(op.x_shape(y)) == shape[1:]
    assert op.A_pinv(y).shape == shape
    assert close(op.A(op.A_pinv(y)), y, tolerance(op, shape, dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_svd_form(case, dtype):
    op, shape = case
    if not isinstance(op, SVDOperator):
        pytest.skip("no SVD form")
    tol = tolerance(op, shape, dtype)
    x, c = randn(shape, dtype, 5), randn(shape, dtype, 6)
    y = op.A(x)
    s = op.singular_values(shape[1:]).to(dtype)
    assert (s >= 0).all() and torch.broadcast_shapes(s.shape, shape) == shape
    # V orthogonal: V_t V = I, V V_t = I, norms preserved, V_t is the adjoint of V
    assert close(op.V_t(op.V(c)), c, tol) and close(op.V(op.V_t(x)), x, tol)
    assert abs(float(op.V_t(x).norm() - x.norm())) <= tol * float(x.norm())
    assert abs(dot(op.V_t(x), c) - dot(x, op.V(c))) <= tol * float(x.norm() * c.norm())
    # U diag(s) Vᵀ = A and V diag(s⁺) Uᵀ = A⁺; U_t is zero where s = 0 and the adjoint of U there
    assert close(op.U(s * op.V_t(x)), y, tol)
    u = randn(y.shape, dtype, 7)
    assert close(op.V(pinv_values(s) * op.U_t(u)), op.A_pinv(u), tol)
    assert (op.U_t(u)[(s == 0).expand(shape)] == 0).all()
    assert close(op.U(op.U_t(y)), y, tol)
    kept = c * (s > 0)
    assert abs(dot(op.U_t(u), c) - dot(u, op.U(kept))) <= tol * float(u.norm() * c.norm())


def dense(fn: Callable[[Tensor], Tensor], in_shape: tuple[int, ...]) -> Tensor:
    """The matrix of a linear map, from its action on the standard basis (float64)."""
    n = int(np.prod(in_shape))
    out = fn(torch.eye(n, dtype=torch.float64).reshape(n, *in_shape))
    return out.reshape(n, -1).T


@pytest.mark.parametrize("name", DENSE)
def test_pinv_equals_dense_pseudo_inverse(name):
    factory, shape = CASES[name]
    op = factory()
    A = dense(op.A, shape[1:])
    y_shape = tuple(op.A(torch.zeros(1, *shape[1:], dtype=torch.float64)).shape[1:])
    A_pinv = dense(op.A_pinv, y_shape)
    expected = torch.linalg.pinv(A, rtol=1e-9)
    assert torch.allclose(A_pinv, expected, atol=1e-9 * float(expected.abs().max()))


def test_wrong_layouts_are_refused_not_broadcast(case):
    """x or y with a dimension too many or too few (e.g. an unbatched image) -> ValueError."""
    op, shape = case
    x = randn(shape, torch.float32, 8)
    y = op.A(x)
    for bad_x, bad_y in ((x[0], y[0]), (x[None], y[None])):
        with pytest.raises(ValueError, match=r"x and y must|x must"):
            op.A(bad_x)
        with pytest.raises(ValueError, match="y must"):
            op.x_shape(bad_y)
        with pytest.raises(ValueError, match="y must"):
            op.A_pinv(bad_y)


def test_gray_chain_refuses_a_color_measurement():
    op = old_photo(cuts_blocks_mask())
    y = op.A(randn((1, 3, 8, 8), torch.float32, 9))
    with pytest.raises(ValueError, match="one channel"):
        op.A_pinv(y.expand(1, 3, 4, 4))


# ---- super-resolution ---------------------------------------------------------------------------


def test_bicubic_taps_factor_2():
    expected = torch.tensor([-3, -9, 29, 111, 111, 29, -9, -3], dtype=torch.float64) / 256
    assert torch.allclose(bicubic_taps(2), expected, rtol=0, atol=1e-15)


def test_bicubic_matrix_mirrors_half_sample_at_the_borders():
    M = bicubic_matrix(8, 2) * 256
    # row 0 reads inputs -3 … 4: -3, -2, -1 mirror onto 2, 1, 0 and their taps are added there
    assert M[0].tolist() == [29 + 111, -9 + 111, -3 + 29, -9, -3, 0, 0, 0]
    # row 3 reads inputs 3 … 10: 8, 9, 10 mirror onto 7, 6, 5
    assert M[3].tolist() == [0, 0, 0, -3, -9, 29 - 3, 111 - 9, 111 + 29]
    # an interior row holds the plain taps on inputs 2r - 3 … 2r + 4
    assert (bicubic_matrix(16, 2)[2] * 256).tolist() == [0, -3, -9, 29, 111, 111, 29, -9, -3] + [
        0
    ] * 7
    assert torch.allclose(bicubic_matrix(24, 3).sum(1), torch.ones(8, dtype=torch.float64))


@pytest.mark.parametrize("factor", [2, 4])
def test_bicubic_interior_matches_antialiased_interpolation(factor):
    # torch's antialiased bicubic downsampling uses the same Keys kernel stretched by f; it
    # renormalises at the borders instead of mirroring, so compare pixels away from them
    x = randn((1, 3, 16 * factor, 16 * factor), torch.float64, 8)
    y = SuperResolution(factor, "bicubic").A(x)
    ref = F.interpolate(x, scale_factor=1 / factor, mode="bicubic", antialias=True)
    assert torch.allclose(y[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2], atol=1e-12)
    assert not torch.allclose(y, ref, atol=1e-3)  # the borders do differ


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
def test_box_is_the_block_mean_and_its_pinv_replicates(factor):
    x = randn((2, 3, 6 * factor, 3 * factor), torch.float32, 9)
    op = SuperResolution(factor)
    y = op.A(x)
    assert torch.allclose(y, F.avg_pool2d(x, factor), atol=1e-6)
    replicated = y.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    assert torch.allclose(op.A_pinv(y), replicated, atol=1e-6)


def test_box_svd_is_one_singular_value_per_block():
    f = 4
    op = SuperResolution(f)
    s = op.singular_values((3, 8, 8))
    assert torch.allclose(s[0, :2, :2], torch.full((2, 2), 1 / f, dtype=torch.float64))
    assert int((s > 0).sum()) == 4
    # the coefficient paired with block (i, j) is f · (block mean), and touches only that block
    x = randn((1, 1, 8, 8), torch.float64, 10)
    assert torch.allclose(op.V_t(x)[..., :2, :2], f * F.avg_pool2d(x, f))
    c = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    c[..., 1, 0] = 1.0  # the coefficient of block (1, 0): its right singular vector, ones / f
    expected = torch.zeros(8, 8, dtype=torch.float64)
    expected[4:8, 0:4] = 1 / f
    assert torch.allclose(op.V(c)[0, 0], expected)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SuperResolution(0), "factor"),
        (lambda: SuperResolution(2.5), "factor"),  # type: ignore[arg-type]
        (lambda: SuperResolution(2, "lanczos"), "filter"),  # type: ignore[arg-type]
        (
            lambda: SuperResolution(3).A(torch.zeros(1, 3, 8, 9)),
            r"factor=3 must divide .* \(8, 9\)",
        ),
        (
            lambda: SuperResolution(2).A_pinv(torch.zeros(3, 4, 4)),
            r"y must have shape \(B, C, H, W\)",
        ),
    ],
)
def test_super_resolution_rejects_bad_input(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ---- colorization, inpainting, identity ---------------------------------------------------------


def test_colorization_closed_forms():
    w = torch.tensor(GOLDEN_WEIGHTS, dtype=torch.float64)
    op = Colorization(GOLDEN_WEIGHTS)
    x = randn((2, 3, 4, 5), torch.float64, 11)
    y = op.A(x)
    assert torch.allclose(y, (w.view(1, 3, 1, 1) * x).sum(1, keepdim=True))
    assert torch.allclose(op.A_pinv(y), y * (w / w.dot(w)).view(1, 3, 1, 1))
    assert op.singular_values((3, 4, 5)).flatten().tolist() == [float(w.norm()), 0.0, 0.0]
    with pytest.raises(ValueError, match="weights"):
        Colorization((0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="x must have shape"):
        op.A(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="y must have shape"):
        op.A_pinv(torch.zeros(1, 3, 2, 2))


def test_inpainting_keeps_known_pixels():
    mask = random_mask(4, 5, 0.5, seed=12)
    op = Inpainting(mask)
    x = randn((2, 3, 4, 5), torch.float32, 13)
    assert torch.equal(op.A(x), x * mask)
    u = randn((2, 3, 4, 5), torch.float32, 14)  # values at unknown pixels are ignored
    assert torch.equal(op.A_pinv(u), u * mask)


@pytest.mark.parametrize(
    ("mask", "x_shape", "message"),
    [
        (torch.ones(4, 4, 1), None, "mask must have shape"),
        (torch.ones(2, 3, 4, 4), None, "mask must have shape"),
        (torch.full((4, 4), 0.5), None, "binary"),
        (torch.ones(4, 4), (1, 3, 4, 5), "match the mask"),
        (torch.ones(2, 1, 4, 4), (3, 3, 4, 4), "match the mask"),
    ],
)
def test_inpainting_rejects_bad_masks(mask, x_shape, message):
    with pytest.raises(ValueError, match=message):
        Inpainting(mask).A(torch.zeros(x_shape or (1, 3, 4, 4)))


def test_identity():
    x = randn((1, 3, 4, 4), torch.float32, 15)
    assert torch.equal(Identity().A(x), x) and torch.equal(Identity().A_pinv(x), x)


def test_operators_are_immutable(case):
    op, _ = case
    for f in dataclasses.fields(op):  # type: ignore[arg-type]
        with pytest.raises(AttributeError):
            setattr(op, f.name, None)


def test_operators_keep_their_own_copy_of_masks_and_permutations():
    mask, perm = torch.ones(4, 4), torch.arange(16)
    inpainting, cs = Inpainting(mask), CompressedSensing(0.5, perm=perm)
    pooling = MaskedPooling(mask, 2)
    mask.zero_()
    perm[:2] = torch.tensor([1, 0])
    assert inpainting.mask.sum() == 16 and pooling.mask.sum() == 16
    assert torch.equal(cs.perm, torch.arange(16))


def test_value_operators_compare_by_value():
    assert SuperResolution(2, "box") == SuperResolution(2)
    assert hash(SuperResolution(2)) == hash(SuperResolution(2))
    assert Deblur(uniform_kernel(3)) == Deblur(uniform_kernel(3)) != Deblur(uniform_kernel(5))


# ---- goldens of the reference ----------------------------------------------------------------


def golden(reference_dir: Path, case: str) -> dict[str, np.ndarray]:
    with np.load(reference_dir / "goldens" / f"{case}.npz") as data:
        return dict(data)


@pytest.mark.parametrize("case", ["svd_sr_averagepooling_x4", "svd_sr_averagepooling_x4_guided"])
def test_golden_sr_box_x4(reference_dir, case):
    g = golden(reference_dir, case)
    y = torch.from_numpy(g["y"]).reshape(1, 3, 8, 8)  # channel-major, then block row, block col
    assert torch.allclose(SuperResolution(4).A(torch.from_numpy(g["x_orig"])), y, atol=1e-6)


def test_golden_colorization(reference_dir):
    g = golden(reference_dir, "svd_colorization")
    y = torch.from_numpy(g["y"]).reshape(1, 1, 32, 32)  # row-major over pixels
    y_ours = Colorization(GOLDEN_WEIGHTS).A(torch.from_numpy(g["x_orig"]))
    assert torch.allclose(y_ours, y, atol=1e-6)


def test_golden_inpainting(reference_dir):
    g = golden(reference_dir, "svd_inpainting")
    mask = torch.from_numpy(g["mask"])
    y_ours = Inpainting(mask).A(torch.from_numpy(g["x_orig"]))
    # the reference's y is pixel-major with interleaved channels over the known pixels
    y_ref_layout = y_ours[0].permute(1, 2, 0)[mask.bool()].flatten()
    assert y_ref_layout.shape == (2214,)
    assert torch.allclose(y_ref_layout, torch.from_numpy(g["y"][0]), atol=1e-6)
    assert (y_ours[0][:, ~mask.bool()] == 0).all()


# ---- deblurring -------------------------------------------------------------------------------


def blur_by_conv2d(x: Tensor, kernel: Tensor) -> Tensor:
    """Direct per-channel convolution with zero boundary and 'same' size."""
    C = x.shape[1]
    k = kernel.to(x)[None, None].expand(C, 1, -1, -1)
    return F.conv2d(x, k, padding="same", groups=C)


@pytest.mark.parametrize(
    "kernel",
    [gaussian_kernel(1.5), uniform_kernel(5), anisotropic_gaussian_kernel(0.8, 2.5, (5, 11))],
    ids=["gaussian", "uniform", "anisotropic"],
)
def test_deblur_is_the_convolution_up_to_the_cutoff(kernel):
    x = randn((2, 3, 20, 24), torch.float64, 20)
    blurred = blur_by_conv2d(x, kernel)
    # cutoff 0 drops only numerically zero singular values: the plain blur
    assert torch.allclose(Deblur(kernel, cutoff=0).A(x), blurred, atol=1e-12)
    # a non-negative kernel summing to 1 has ‖K_a‖₂ <= 1: the truncated A is within cutoff · ‖x‖
    for cutoff in (1e-3, 1e-2, 1e-1):
        error = float((Deblur(kernel, cutoff=cutoff).A(x) - blurred).norm())
        assert error <= cutoff * float(x.norm()) * (1 + 1e-9)
    assert float((Deblur(kernel).A(x) - blurred).norm()) > 0  # the default does truncate here


def test_deblur_accepts_any_kernel_container():
    kernel = gaussian_kernel(1.0)
    reference = Deblur(kernel)
    for same in (kernel.numpy(), kernel.tolist(), kernel.clone().requires_grad_()):
        assert Deblur(same) == reference
    x = randn((1, 3, 8, 8), torch.float32, 22)
    assert torch.allclose(Deblur(kernel.float()).A(x), reference.A(x), atol=1e-6)


def test_deblur_conv_check_tells_a_wrong_blur_apart():
    kernel = anisotropic_gaussian_kernel(0.8, 2.5, (5, 11))
    x = randn((1, 3, 20, 24), torch.float64, 21)
    error = float((Deblur(kernel.T).A(x) - blur_by_conv2d(x, kernel)).norm())
    assert error > 1e-2 * float(x.norm())  # the transposed kernel misses the tolerance above


def test_deblur_truncation_bounds_the_singular_values():
    op = Deblur(gaussian_kernel(2.0), cutoff=1e-2)
    s = op.singular_values((3, 32, 32))
    kept = s[s > 0]
    assert float(kept.min()) >= 1e-4 * float(s.max())  # cutoff² of the largest
    assert int((s == 0).sum()) > 0  # the Gaussian with σ = 2 has dropped directions at 32 px


def test_kernel_helpers():
    g = gaussian_kernel(1.2)
    assert g.shape == (9, 9) and torch.allclose(g.sum(), torch.tensor(1.0, dtype=g.dtype))
    assert torch.allclose(g, g.T) and torch.allclose(g, g.flip(0))
    a = anisotropic_gaussian_kernel(0.5, 2.0)
    assert a.shape == (5, 13) and float(a[2, 6]) == float(a.max())
    assert torch.equal(uniform_kernel(3), torch.full((3, 3), 1 / 9, dtype=torch.float64))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Deblur(torch.eye(3)), "separable"),
        (lambda: Deblur(torch.ones(4, 4)), "odd"),
        (lambda: Deblur(torch.ones(3)), "2-D"),
        (lambda: Deblur(uniform_kernel(3), cutoff=1.0), "cutoff"),
        (lambda: gaussian_kernel(0.0), "sigma"),
        (lambda: uniform_kernel(2), "odd"),
    ],
)
def test_deblur_rejects_bad_input(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ---- compressed sensing -------------------------------------------------------------------------


def sylvester(n: int) -> Tensor:
    """The natural-order Hadamard matrix H_n built by H_2k = [[H_k, H_k], [H_k, -H_k]]."""
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


def test_fwht_is_the_sylvester_hadamard_transform():
    for n in (1, 2, 8, 64):
        x = randn((3, n), torch.float64, n)
        assert torch.allclose(fwht(x), x @ sylvester(n).T, atol=1e-12)


def test_walsh_hadamard_keeps_the_permuted_rows():
    op = CompressedSensing(0.25, image_size=(4, 8), seed=3)
    x = randn((2, 3, 4, 8), torch.float64, 22)
    rows = (sylvester(32) / 32**0.5)[op.perm[: op.m]]
    assert op.m == 8
    assert torch.allclose(op.A(x), x.flatten(2) @ rows.T, atol=1e-12)


def test_block_kind_transforms_every_block():
    op = CompressedSensing(0.5, "block", block_size=2, perm=torch.tensor([3, 0, 2, 1]))
    x = randn((1, 2, 4, 6), torch.float64, 23)
    y = op.A(x)
    assert y.shape == (1, 2, 2, 3, 2)
    rows = (sylvester(4) / 2)[[3, 0]]
    block = x[0, 1, 2:4, 4:6].flatten()  # block (1, 2) of channel 1, row-major
    assert torch.allclose(y[0, 1, 1, 2], rows @ block)


def test_permutation_is_drawn_from_the_seed_and_stored():
    a, b = CompressedSensing(0.5, image_size=16), CompressedSensing(0.5, image_size=16)
    assert torch.equal(a.perm, b.perm)
    assert not torch.equal(a.perm, CompressedSensing(0.5, image_size=16, seed=1).perm)
    replay = CompressedSensing(0.5, perm=a.perm)  # the stored perm reproduces the operator
    x = randn((1, 3, 16, 16), torch.float32, 24)
    assert torch.equal(replay.A(x), a.A(x)) and replay.image_size == (16, 16)
    as_list = CompressedSensing(0.5, perm=a.perm.tolist())  # any sequence; stored as a tensor
    assert torch.equal(as_list.A(x), a.A(x)) and torch.equal(as_list.perm, a.perm)
    blocks = CompressedSensing(0.5, "block", block_size=4, image_size=torch.Size([8, 16]))
    assert blocks.image_size == (8, 16) and blocks.A(x[..., :8, :]).shape == (1, 3, 2, 4, 8)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CompressedSensing(0.0, image_size=8), "ratio"),
        (lambda: CompressedSensing(1.5, image_size=8), "ratio"),
        (lambda: CompressedSensing(0.5, image_size=6), "power of two"),
        (lambda: CompressedSensing(0.5, "block", block_size=3), "block_size"),
        (lambda: CompressedSensing(0.5), "image_size"),
        (lambda: CompressedSensing(0.5, perm=torch.arange(8)), "square"),
        (lambda: CompressedSensing(0.5, perm=torch.zeros(16)), "permutation"),
        (lambda: CompressedSensing(0.01, image_size=4), "keeps no coefficient"),
        (lambda: CompressedSensing(0.5, "walsh_fft", image_size=4), "kind"),  # type: ignore[arg-type]
        (lambda: CompressedSensing(0.5, image_size=8).A(torch.zeros(1, 3, 4, 16)), "x must"),
        (lambda: CompressedSensing(0.5, image_size=8).A_pinv(torch.zeros(1, 3, 31)), "y must"),
    ],
)
def test_compressed_sensing_rejects_bad_input(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ---- compositions -------------------------------------------------------------------------------


def test_old_photo_is_the_chain_of_its_parts_with_an_exact_pinv():
    mask = cuts_blocks_mask()
    parts = (Inpainting(mask), Colorization(), SuperResolution(2))
    op = compose(*parts)
    assert isinstance(op, KroneckerProduct) and op.exact_pinv
    x = randn((2, 3, 8, 8), torch.float64, 30)
    chained = x
    for part in parts:
        chained = part.A(chained)
    assert torch.allclose(op.A(x), chained)
    # the reverse product of the parts' pseudo-inverses is not a pseudo-inverse of this chain
    naive = Composition(parts, "reverse product")
    assert float((op.A(naive.A_pinv(chained)) - chained).abs().max()) > 0.1
    assert torch.allclose(op.A(op.A_pinv(chained)), chained)
    # per block: f² y / k on the k known pixels; blocks without a known pixel map to 0
    y = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    x_hat = op.A_pinv(y)[0, 0]
    assert torch.allclose(x_hat[0:2, 0:2], torch.tensor([[4.0, 0.0], [0.0, 0.0]]).double())
    assert (x_hat[2:4, 4:6] == 0).all()


def test_compose_rewrites_known_chains():
    mask_lr = random_mask(4, 4, 0.5, seed=31)
    assert isinstance(compose(SuperResolution(2), Inpainting(mask_lr)), MaskedPooling)
    assert compose(SuperResolution(2), SuperResolution(3)).A(torch.zeros(1, 3, 6, 6)).shape == (
        1,
        3,
        1,
        1,
    )
    assert isinstance(compose(Deblur(uniform_kernel(3)), SuperResolution(2)), SeparableChain)
    assert isinstance(compose(Identity(), Colorization(), Identity()), Colorization)
    nested = compose(compose(Inpainting(cuts_blocks_mask()), Colorization()), SuperResolution(2))
    flat = old_photo(cuts_blocks_mask())
    x = randn((1, 3, 8, 8), torch.float64, 32)
    assert torch.allclose(nested.A(x), flat.A(x)) and nested.exact_pinv


def test_blur_then_downsample_is_the_chain_up_to_the_cutoff():
    kernel = gaussian_kernel(2.0)
    x = randn((1, 3, 32, 32), torch.float64, 33)
    chained = F.avg_pool2d(blur_by_conv2d(x, kernel), 2)
    exact = compose(Deblur(kernel, cutoff=0), SuperResolution(2))
    assert torch.allclose(exact.A(x), chained, atol=1e-9)
    op = compose(Deblur(kernel, cutoff=1e-2), SuperResolution(2))
    # ‖K‖₂ <= 1 and the pooling matrix has norm 1/√2 per axis: two truncations of 1e-2 each
    assert float((op.A(x) - chained).norm()) <= 2e-2 * float(x.norm())


@pytest.mark.parametrize(
    "parts",
    [
        lambda: (Inpainting(random_mask(8, 8, 0.5, 34)), Deblur(gaussian_kernel(1.0))),
        lambda: (SuperResolution(2, "bicubic"), Inpainting(random_mask(4, 4, 0.5, 35))),
        lambda: (Colorization(), Colorization((1.0,))),
        lambda: (CompressedSensing(0.5, image_size=8), SuperResolution(2)),
    ],
    ids=["mask_blur", "bicubic_mask", "two_colorizations", "cs_sr"],
)
def test_chains_without_exact_pinv_are_flagged(parts):
    op = compose(*parts())
    assert isinstance(op, Composition) and op.exact_pinv is False
    assert "no exact pseudo-inverse" in op.description


def test_flagged_chain_is_indeed_not_a_pseudo_inverse():
    op = compose(Inpainting(random_mask(6, 6, 0.5, 34)), Deblur(gaussian_kernel(1.0)))
    A, A_pinv = dense(op.A, (1, 6, 6)), dense(op.A_pinv, (1, 6, 6))
    assert not torch.allclose(A_pinv, torch.linalg.pinv(A, rtol=1e-9), atol=1e-3)
    assert not torch.allclose(A @ A_pinv, (A @ A_pinv).T, atol=1e-3)  # A A⁺ is not symmetric


def test_compose_rejects_bad_input():
    with pytest.raises(ValueError, match="compose needs"):
        compose()
    with pytest.raises(ValueError, match="do not line up"):
        compose(Inpainting(torch.ones(8, 8)), SuperResolution(2), Inpainting(torch.ones(3, 3)))


# ---- measurements -------------------------------------------------------------------------------


def test_measure_adds_gaussian_noise_of_twice_sigma_y():
    op = SuperResolution(2)
    x = randn((4, 3, 64, 64), torch.float64, 40)
    y = measure(op, x, 0.1, generator=torch.Generator().manual_seed(0))
    noise = y - op.A(x)
    assert abs(float(noise.std()) - 0.2) < 0.01 and abs(float(noise.mean())) < 0.01
    replay = measure(op, x, 0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, replay)
    assert torch.equal(measure(op, x, 0.0), op.A(x))
    with pytest.raises(ValueError, match="sigma_y"):
        measure(op, x, -0.1)


def test_reflect_boundary_blurs_as_scipy_does() -> None:
    """boundary "reflect" is scipy.ndimage's "reflect" (the border pixel repeated), the zero
    boundary its "constant"; a kernel wider than the image cannot be reflected and is refused."""
    from scipy import ndimage

    x = torch.rand(1, 1, 20, 17, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k = gaussian_kernel(1.5)
    for boundary, mode in (("reflect", "reflect"), ("zero", "constant")):
        blurred = ndimage.correlate(x[0, 0].numpy(), k.numpy(), mode=mode)
        ours = Deblur(k, cutoff=0, boundary=boundary).A(x)[0, 0].numpy()
        assert np.abs(ours - blurred).max() < 1e-12, boundary
    with pytest.raises(ValueError, match="larger than the image side 8"):
        Deblur(gaussian_kernel(2.0), boundary="reflect").A(torch.zeros(1, 1, 8, 8))

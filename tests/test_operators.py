"""The operator contract, parametrised over every degradation and chain, plus per-operator checks.

Contract (issue 2): the four Penrose conditions on random inputs, A(A⁺ y) = y for y in the range,
and the SVD form U diag(s) Vᵀ reproducing A with V orthogonal; A⁺ is also compared with the
pseudo-inverse of the dense matrix of A. Goldens: A applied to the reference `x_orig` gives the
stored `y` once that is reshaped into this package's image layout.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from ddnm.operators import (
    Colorization,
    Identity,
    Inpainting,
    LinearOperator,
    SuperResolution,
    SVDOperator,
)
from ddnm.operators.base import pinv_values
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
}
# cases whose measurement layout does not depend on the batch: the dense matrix test runs on them
DENSE = [name for name in CASES if name != "inpainting_batch"]


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> tuple[LinearOperator, tuple[int, int, int, int]]:
    factory, shape = CASES[request.param]
    return factory(), shape


def randn(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, seed: int) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def close(a: Tensor, b: Tensor, dtype: torch.dtype, scale: float | None = None) -> bool:
    """‖a - b‖ <= tol · scale (scale defaults to ‖b‖)."""
    ref = float(b.norm()) if scale is None else scale
    return float((a - b).norm()) <= TOL[dtype] * max(ref, 1e-12)


def dot(a: Tensor, b: Tensor) -> float:
    return float((a * b).sum())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_penrose_conditions(case, dtype):
    op, shape = case
    x, z = randn(shape, dtype, 0), randn(shape, dtype, 1)
    y_shape = op.A(x).shape
    u, v = randn(y_shape, dtype, 2), randn(y_shape, dtype, 3)
    A, Ap = op.A, op.A_pinv
    assert close(A(Ap(A(x))), A(x), dtype)  # A A⁺ A = A
    assert close(Ap(A(Ap(u))), Ap(u), dtype)  # A⁺ A A⁺ = A⁺
    scale = float(u.norm() * v.norm())
    assert abs(dot(A(Ap(u)), v) - dot(u, A(Ap(v)))) <= TOL[dtype] * scale  # (A A⁺)ᵀ = A A⁺
    scale = float(x.norm() * z.norm())
    assert abs(dot(Ap(A(x)), z) - dot(x, Ap(A(z)))) <= TOL[dtype] * scale  # (A⁺ A)ᵀ = A⁺ A


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_consistency_on_the_range(case, dtype):
    op, shape = case
    y = op.A(randn(shape, dtype, 4))
    assert tuple(op.x_shape(y)) == shape[1:]
    assert op.A_pinv(y).shape == shape
    assert close(op.A(op.A_pinv(y)), y, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_svd_form(case, dtype):
    op, shape = case
    if not isinstance(op, SVDOperator):
        pytest.skip("no SVD form")
    x, c = randn(shape, dtype, 5), randn(shape, dtype, 6)
    y = op.A(x)
    s = op.singular_values(shape[1:]).to(dtype)
    assert (s >= 0).all() and torch.broadcast_shapes(s.shape, shape) == shape
    # V orthogonal: V_t V = I, V V_t = I, norms preserved, V_t is the adjoint of V
    assert close(op.V_t(op.V(c)), c, dtype) and close(op.V(op.V_t(x)), x, dtype)
    assert abs(float(op.V_t(x).norm() - x.norm())) <= TOL[dtype] * float(x.norm())
    assert abs(dot(op.V_t(x), c) - dot(x, op.V(c))) <= TOL[dtype] * float(x.norm() * c.norm())
    # U diag(s) Vᵀ = A and V diag(s⁺) Uᵀ = A⁺; U_t is zero where s = 0 and the adjoint of U there
    assert close(op.U(s * op.V_t(x)), y, dtype)
    u = randn(y.shape, dtype, 7)
    assert close(op.V(pinv_values(s) * op.U_t(u)), op.A_pinv(u), dtype)
    assert (op.U_t(u)[(s == 0).expand(shape)] == 0).all()
    assert close(op.U(op.U_t(y)), y, dtype)
    kept = c * (s > 0)
    assert abs(dot(op.U_t(u), c) - dot(u, op.U(kept))) <= TOL[dtype] * float(u.norm() * c.norm())


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
    c[..., 1, 0] = 1.0
    assert torch.allclose(
        op.V(c),
        torch.ones(4, 4, dtype=torch.float64)
        .new_zeros(8, 8)
        .index_put(
            (torch.arange(4, 8)[:, None], torch.arange(4)[None]),
            torch.tensor(1 / f, dtype=torch.float64),
        ),
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SuperResolution(0), "factor"),
        (lambda: SuperResolution(2.5), "factor"),  # type: ignore[arg-type]
        (lambda: SuperResolution(2, "lanczos"), "filter"),  # type: ignore[arg-type]
        (lambda: SuperResolution(3).A(torch.zeros(1, 3, 8, 9)), "factor=3 must divide"),
        (lambda: SuperResolution(2, "bicubic").A_pinv(torch.zeros(1, 3, 3, 3)).shape, None),
    ],
)
def test_super_resolution_rejects_bad_input(make, message):
    if message is None:  # a valid call, for contrast: any y maps back to twice its size
        assert make() == (1, 3, 6, 6)
        return
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


def test_operators_are_immutable():
    op = SuperResolution(2)
    with pytest.raises(AttributeError):
        op.factor = 3  # type: ignore[misc]
    assert SuperResolution(2, "box") == op and hash(SuperResolution(2)) == hash(op)


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

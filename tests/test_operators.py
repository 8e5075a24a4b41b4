"""Measurement operators: adjoint identity, dense matrices, SVDs, Gram solves."""

import pytest
import torch

from sdeflow.inverse import Blur, Downsample, Identity, Mask, Matrix, RandomProjection, conjugate_gradient

SHAPE = (2, 6, 6)


def operators():
    g = torch.Generator().manual_seed(0)
    return {
        "identity": Identity(SHAPE),
        "mask": Mask(torch.rand(SHAPE, generator=g) < 0.4),
        "blur": Blur.gaussian(SHAPE, std=1.0),
        "blur-asymmetric": Blur(SHAPE, torch.rand(3, 5, generator=g, dtype=torch.float64)),
        "downsample": Downsample(SHAPE, 2),
        "random-projection": RandomProjection(SHAPE, 20, seed=1),
        "matrix": Matrix(torch.randn(7, 72, generator=g, dtype=torch.float64), SHAPE),
    }


@pytest.mark.parametrize("name", sorted(operators()))
def test_adjoint_identity(name):
    op = operators()[name]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, *SHAPE, generator=g, dtype=torch.float64)
    y = torch.randn(4, *op.out_shape, generator=g, dtype=torch.float64)
    lhs = (op(x) * y).flatten(1).sum(1)
    rhs = (x * op.adjoint(y)).flatten(1).sum(1)
    assert torch.allclose(lhs, rhs, rtol=1e-12, atol=1e-12)
    A = op.matrix()
    assert A.shape == (op.out_dim, op.dim)
    assert torch.allclose(op(x).reshape(4, -1), x.reshape(4, -1) @ A.T, atol=1e-12)


@pytest.mark.parametrize("name", ["identity", "mask", "downsample", "random-projection", "blur"])
def test_gram_solve(name):
    op = operators()[name]
    g = torch.Generator().manual_seed(2)
    r = torch.randn(3, *op.out_shape, generator=g, dtype=torch.float64)
    lam = torch.tensor([0.0 if name != "blur" else 1e-2, 0.1, 2.0], dtype=torch.float64)
    u = op.gram_solve(r, lam, iters=200)
    A = op.matrix()
    for b in range(3):
        expected = torch.linalg.solve(A @ A.T + lam[b] * torch.eye(A.shape[0], dtype=torch.float64), r[b].flatten())
        assert torch.allclose(u[b].flatten(), expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["identity", "mask", "matrix", "random-projection"])
def test_svd_factorisation(name):
    op = operators()[name]
    s, u, ut, vt, v = op.svd()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, *SHAPE, generator=g, dtype=torch.float64)
    z = vt(x)
    assert torch.allclose(v(z), x, atol=1e-10)  # V is orthogonal
    m = s.numel()
    assert torch.allclose(u(s * z[:, :m]).reshape(2, -1), op(x).reshape(2, -1), atol=1e-10)


def test_conjugate_gradient_per_sample():
    g = torch.Generator().manual_seed(4)
    q = torch.randn(5, 5, generator=g, dtype=torch.float64)
    spd = q @ q.T + 0.5 * torch.eye(5, dtype=torch.float64)
    b = torch.randn(3, 5, generator=g, dtype=torch.float64)
    b[1] = 0.0  # a converged sample stays at zero, no NaN
    x = conjugate_gradient(lambda p: p @ spd, b, iters=30)
    assert torch.isfinite(x).all() and torch.allclose(x @ spd, b, atol=1e-9)


def test_bad_operators_are_clear_errors():
    with pytest.raises(ValueError, match="divisible"):
        Downsample((1, 6, 6), 4)
    with pytest.raises(ValueError, match="odd"):
        Blur(SHAPE, torch.ones(2, 2))
    with pytest.raises(ValueError, match="keeps nothing"):
        Mask(torch.zeros(SHAPE, dtype=torch.bool))
    with pytest.raises(ValueError, match="acts on samples of shape"):
        Identity(SHAPE)(torch.zeros(1, 3))


@pytest.mark.parametrize("name", sorted(operators()) + ["tall-matrix"])
def test_gram_apply_is_a_function_of_the_dense_gram_matrix(name):
    """``gram_apply(r, fn) = Q fn(E) Q^T r`` for ``A A^T = Q E Q^T``: the closed forms (identity, masks,
    downsampling), the Kronecker factors of a separable blur and the dense default agree with a
    dense eigendecomposition, also for per-sample factors."""
    g = torch.Generator().manual_seed(4)
    op = operators().get(name) or Matrix(torch.randn(90, 72, generator=g, dtype=torch.float64), SHAPE)
    A = op.matrix()
    e, Q = torch.linalg.eigh(A @ A.T)
    e = e.clamp_min(0.0)
    r = torch.randn(3, *op.out_shape, generator=g, dtype=torch.float64)
    def fn(ev):
        return ev.sqrt() + 1.0 / (1.0 + ev)
    want = (r.reshape(3, -1) @ Q * fn(e)) @ Q.T
    assert torch.allclose(op.gram_apply(r, fn).reshape(3, -1), want, atol=1e-10)
    scale = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    per_sample = op.gram_apply(r, lambda ev: scale.reshape(-1, *([1] * ev.ndim)) * fn(ev))
    assert torch.allclose(per_sample.reshape(3, -1), scale[:, None] * want, atol=1e-10)


def test_separable_blur_uses_small_factors():
    op = Blur.gaussian((1, 40, 40), std=1.5)
    e, qt, q = op.gram_eig()
    assert e.shape == (40, 40)  # two 40 x 40 factors, not a 1600 x 1600 matrix
    x = torch.randn(2, 1, 40, 40, dtype=torch.float64)
    assert torch.allclose(q(qt(x)), x, atol=1e-10)


def test_dense_gram_refuses_huge_operators():
    """A non-separable kernel on 100 x 100 images would need a 10^4 x 10^4 eigendecomposition."""
    op = Blur((1, 100, 100), torch.rand(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="10000 measurements.*conjugate gradients"):
        op.gram_eig()

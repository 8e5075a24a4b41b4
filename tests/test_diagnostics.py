"""The diagnostics against exact answers: true scores solve the Fokker-Planck equation and are gradient
fields; a gauge term that keeps the marginals is reported as asymmetry; rank-k data have dimension k."""

import pytest
import torch

from sdeflow import analytic, schedules
from sdeflow.denoisers import Denoiser
from sdeflow.diagnostics import (fokker_planck_residual, intrinsic_dimension, jacobian_asymmetry, loop_circulation,
                                 model_score, ode_sde_gap)

SCHEDULES = [schedules.VPLinear(), schedules.RectifiedFlow(), schedules.EDM()]


def _mixture(d=4, seed=0):
    return analytic.random_mixture(d, 3, seed=seed, structure="full")


class Perturbed(Denoiser):
    """The exact denoiser with ``eps`` times a smooth non-score term added to ``x_hat``."""

    def __init__(self, inner, eps):
        super().__init__(inner.schedule)
        self.inner, self.eps = inner, eps

    def forward(self, x_t, t, **cond):
        return self.inner(x_t, t, **cond) + self.eps * torch.sin(x_t.flip(-1))


class Gauged(Denoiser):
    """Gaussian data N(mu, c I): the exact field plus the gauge term ``R (x - alpha mu)`` (``R`` antisymmetric)
    in the probability-flow velocity, written into ``x_hat``; its marginals are the exact ones."""

    def __init__(self, gauss, mu, R):
        super().__init__(gauss.denoiser(schedules.VPLinear()).schedule)
        self.inner, self.mu, self.R = gauss.denoiser(self.schedule), mu, R

    def forward(self, x_t, t, **cond):
        tt = torch.as_tensor(t, dtype=torch.float64)
        a, da = float(self.schedule.alpha(tt)), float(self.schedule.d_alpha(tt))
        s, ds = float(self.schedule.sigma(tt)), float(self.schedule.d_sigma(tt))
        # v = alpha' x_hat + sigma' (x - alpha x_hat) / sigma: adding w to v adds w / (alpha' - sigma' alpha / sigma) to x_hat
        w = (x_t - a * self.mu) @ self.R.T
        return self.inner(x_t, t) + w / (da - ds * a / s)


@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: type(s).__name__)
def test_the_exact_score_solves_the_fokker_planck_equation_and_a_perturbed_one_does_not(sch):
    mix = _mixture()
    den = mix.denoiser(sch)
    t = 0.5 if not isinstance(sch, schedules.EDM) else 0.05
    x, _ = mix.sample_t(64, sch, t, torch.Generator().manual_seed(1))
    exact = fokker_planck_residual(den, x, t)
    assert float(exact["relative"].max()) < 1e-5  # the central difference in t, O(dt^2): measured 3e-8 to 7e-7
    bad = fokker_planck_residual(Perturbed(den, 0.05), x, t)
    assert float(bad["relative"].median()) > 100 * float(exact["relative"].max())  # measured 0.02-0.04
    # Hutchinson's divergence (for high dimension) is unbiased: with 256 Gaussian probes its relative
    # standard deviation is sqrt(2 / 256) ||J||_F / |tr J|, under 5% here; 15% is three of them
    est = fokker_planck_residual(den, x, t, probes=256, generator=torch.Generator().manual_seed(0))
    assert float(((est["divergence"] - exact["divergence"]).abs() / exact["divergence"].abs()).median()) < 0.15


def test_a_true_score_is_a_gradient_field_and_a_gauge_term_is_reported():
    """Gaussian data N(mu, 0.5 I): R (x - alpha mu) in the velocity keeps every marginal (div(p w) = 0 for
    antisymmetric R and isotropic covariance), so the exact ODE still carries p_1 to the data, while the
    score's Jacobian gains the antisymmetric part the diagnostic reports."""
    d = 4
    mu = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64)
    gauss = analytic.gaussian(mu, 0.5 * torch.eye(d, dtype=torch.float64))
    sch = schedules.VPLinear()
    x, _ = gauss.sample_t(256, sch, 0.5, torch.Generator().manual_seed(2))
    exact = jacobian_asymmetry(gauss.denoiser(sch), x, 0.5, generator=torch.Generator().manual_seed(0))
    assert float(exact.max()) < 1e-12
    R = torch.tensor([[0, 1, 0, 0], [-1, 0, 2, 0], [0, -2, 0, 0.5], [0, 0, -0.5, 0]], dtype=torch.float64)
    gauged = Gauged(gauss, mu, R)
    asym = jacobian_asymmetry(gauged, x, 0.5, generator=torch.Generator().manual_seed(0))
    assert float(asym.min()) > 0.05  # measured median 0.59
    # the marginals are unchanged: the ODE from exact p_1 samples lands on the data's law
    from sdeflow import grids, sample, samplers

    x1, _ = gauss.sample_t(4000, sch, 1.0, torch.Generator().manual_seed(3))
    out = sample(gauged, samplers.RK4(), grids.logsnr_grid(200, sch), x1).x
    assert torch.allclose(out.mean(0), mu, atol=0.05)
    assert torch.allclose(torch.cov(out.T), 0.5 * torch.eye(d, dtype=torch.float64), atol=0.05)


@pytest.mark.parametrize("method", ["flipd", "normal"])
def test_rank_k_data_have_intrinsic_dimension_k(method):
    """A mixture of 3 components in 10-D, each with a rank-3 covariance plus an isotropic floor 1e-6: both
    estimators return 3 at noise level sigma/alpha = 0.01 (FLIPD measured 3.07: the floor's 7 directions
    add 7 x 1e-6 / (1e-6 + 1e-4))."""
    g = torch.Generator().manual_seed(4)
    d, k = 10, 3
    factors = torch.randn(3, d, k, generator=g, dtype=torch.float64)
    cov = analytic.LowRankPlusDiagonal(torch.full((3, d), 1e-6, dtype=torch.float64), factors)
    mix = analytic.GaussianMixture(torch.ones(3, dtype=torch.float64) / 3, 6 * torch.randn(3, d, generator=g, dtype=torch.float64), cov)
    sch = schedules.VPLinear()
    t = float(sch.t_from_sigma_ratio(torch.tensor(0.01, dtype=torch.float64)))
    x = mix.sample(8, g)
    est = intrinsic_dimension(mix.denoiser(sch), x, t, method=method, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(est, torch.full_like(est, float(k)), atol=0.25), est


def test_the_score_is_read_through_any_parameterization():
    mix, sch = _mixture(), schedules.RectifiedFlow()
    x, _ = mix.sample_t(16, sch, 0.4, torch.Generator().manual_seed(5))
    assert torch.allclose(model_score(mix.denoiser(sch), x, 0.4), mix.score(x, sch, 0.4), atol=1e-10)


def test_bad_input_is_refused():
    mix = _mixture()
    den = mix.denoiser(schedules.VPLinear())
    x = mix.sample(4)
    with pytest.raises(ValueError, match="room for the time derivative"):
        fokker_planck_residual(den, x, 1.0)
    with pytest.raises(ValueError, match="method must be"):
        intrinsic_dimension(den, x, 0.01, method="pca")


def test_the_ode_and_the_sde_of_a_true_score_agree_and_a_residual_parts_them():
    """On the ring (VP, 4000 samples): the exact score's ODE and SDE samples are as close as two SDE runs
    (measured 0.025 against 0.049), the perturbed score's ODE and SDE part (measured 0.73 against 0.07)."""
    mix, sch = analytic.ring_2d(), schedules.VPLinear()
    exact = ode_sde_gap(mix.denoiser(sch), (2,), 4000)
    assert exact["gap"] < 2 * exact["floor"]
    bad = ode_sde_gap(Perturbed(mix.denoiser(sch), 0.3), (2,), 4000)
    assert bad["gap"] > 5 * bad["floor"] and bad["gap"] > 10 * exact["gap"]


def test_loop_integrals_vanish_for_a_score_and_equal_the_gauge_terms_curl():
    """The gauge term adds ``k R (x - alpha mu)`` to the score, ``k = alpha / (sigma^2 (alpha' - sigma' alpha /
    sigma))``: its circulation around a circle of radius r in the plane (u, v) is exactly ``2 pi r^2 k v^T R u``
    (the trapezoid rule is exact for a linear field), while the exact Gaussian score's, and a mixture's to
    quadrature accuracy, is zero."""
    d, t = 4, 0.5
    mu = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64)
    gauss = analytic.gaussian(mu, 0.5 * torch.eye(d, dtype=torch.float64))
    sch = schedules.VPLinear()
    x, _ = gauss.sample_t(32, sch, t, torch.Generator().manual_seed(2))
    R = torch.tensor([[0, 1, 0, 0], [-1, 0, 2, 0], [0, -2, 0, 0.5], [0, 0, -0.5, 0]], dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(32, d, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64))[0]
    u, v = q[..., 0], q[..., 1]
    tt = torch.tensor(t, dtype=torch.float64)
    a, da, s, ds = (float(f(tt)) for f in (sch.alpha, sch.d_alpha, sch.sigma, sch.d_sigma))
    k = a / (s * s * (da - ds * a / s))
    want = 2 * k * torch.einsum("bi,ij,bj->b", v, R, u)
    got = loop_circulation(Gauged(gauss, mu, R), x, t, planes=(u, v), radius=0.3, points=5)
    assert torch.allclose(got["curl"], want, rtol=1e-9, atol=1e-9) and float(got["relative"].min()) > 0.01
    assert float(loop_circulation(gauss.denoiser(sch), x, t, planes=(u, v))["curl"].abs().max()) < 1e-9
    mix = _mixture()
    xm, _ = mix.sample_t(32, sch, t, torch.Generator().manual_seed(4))
    curl = loop_circulation(mix.denoiser(sch), xm, t, points=32, generator=torch.Generator().manual_seed(5))
    assert float(curl["relative"].max()) < 1e-12, curl["relative"].max()  # measured 3e-15 (round-off)

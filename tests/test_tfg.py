"""TFG: its terms checked against their definitions (the denoiser at zero strength, the gradient
through the denoiser by finite differences, the smoothed predictor against its closed form for a
Gaussian likelihood, one mean step), its effect on the exact labelled ring, and the recurrence
wrapper's forward transition."""

import math

import pytest
import torch

from sdeflow import grids, sample, schedules
from sdeflow.analytic import gaussian, ring_2d
from sdeflow.guidance import guided
from sdeflow.guidance.tfg import TFG
from sdeflow.samplers.recurrent import Recurrent
from sdeflow.samplers import DDIM, DPMSolverPP

MIX = ring_2d(n_classes=2)
Y, S = torch.tensor([0.7, -0.4], dtype=torch.float64), 0.3


def gaussian_likelihood(x0, **cond):
    """log N(Y; x0, S^2 I)."""
    return -0.5 * ((x0 - Y) / S).pow(2).sum(1) - x0.shape[1] * math.log(S * math.sqrt(2 * math.pi))


def _x(n=64, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_at_zero_strength_it_is_the_denoiser():
    den = MIX.denoiser(schedules.VPLinear())
    x = _x()
    assert torch.equal(TFG(den, gaussian_likelihood, rho=0.0)(x, 0.4), den(x, 0.4))


def test_variance_guidance_is_the_gradient_through_the_denoiser():
    """``x_hat + rho sigma^2/alpha grad_{x_t} log f(x_hat(x_t))``, the gradient checked by central differences."""
    sch = schedules.VPLinear()
    den, x, t, rho = MIX.denoiser(sch), _x(8), 0.45, 0.7
    a, s = float(sch.alpha(t)), float(sch.sigma(t))
    got = TFG(den, gaussian_likelihood, rho=rho)(x, t) - den(x, t)
    h, fd = 1e-6, torch.zeros_like(x)
    for j in range(2):
        e = torch.zeros_like(x)
        e[:, j] = h
        fd[:, j] = (gaussian_likelihood(den(x + e, t)) - gaussian_likelihood(den(x - e, t))) / (2 * h)
    assert torch.allclose(got, rho * s * s / a * fd, rtol=1e-6, atol=1e-9)


def test_the_smoothed_predictor_is_the_likelihood_of_the_widened_gaussian():
    """Averaging ``N(Y; x0 + std eps, S^2)`` over ``eps`` gives ``N(Y; x0, S^2 + std^2)``: the Monte Carlo
    estimate over 20000 probes at points within a standard deviation of ``Y`` (where it has a small
    variance) agrees to 0.02 nats."""
    den = MIX.denoiser(schedules.VPLinear())
    tfg, std = TFG(den, gaussian_likelihood, probes=20000, seed=3), 0.2
    x0 = Y + 0.15 * _x(4)
    var = S * S + std * std
    want = -0.5 * (x0 - Y).pow(2).sum(1) / var - math.log(2 * math.pi * var)
    assert torch.allclose(tfg.smoothed(x0, std, {}), want, atol=0.02)


def test_one_mean_step_moves_the_clean_estimate_up_the_predictor():
    """With ``rho = 0`` and one iteration: ``x_hat + mu (Y - x_hat) / S^2``."""
    den = MIX.denoiser(schedules.VPLinear())
    x, mu = _x(), 0.01
    x_hat = den(x, 0.3)
    assert torch.allclose(TFG(den, gaussian_likelihood, rho=0.0, mu=mu)(x, 0.3), x_hat + mu * (Y - x_hat) / S ** 2,
                          rtol=1e-12, atol=1e-12)


def test_guidance_towards_a_class_raises_its_share_on_the_exact_ring():
    """On the two-class ring with the exact clean classifier, the expected share of class 0 among DDIM
    samples of the unconditional model (measured by the exact ``p_0(c | x)``) rises with rho (0.47 unguided,
    about 0.56, 0.86 and 0.92 at rho 0.5, 2 and 4), and mean guidance or recurrence raise it further."""
    sch = schedules.VPLinear()
    den, clf, x = MIX.denoiser(sch), MIX.classifier(sch), _x(4000)
    lab = torch.zeros(x.shape[0], dtype=torch.long)
    ts = grids.logsnr_grid(20, sch)

    def share(denoiser, sampler=DDIM()):
        out = sample(denoiser, sampler, ts, x, cond={"label": lab}).x
        return float(clf(out, 0.0, lab).exp().mean())

    def predictor(x0, label=None):
        return clf(x0, 0.0, label)
    shares = [share(TFG(den, predictor, rho=r)) for r in (0.0, 0.5, 2.0, 4.0)]
    assert all(a < b for a, b in zip(shares, shares[1:])) and shares[0] < 0.5 < 0.85 < shares[2], shares
    assert share(TFG(den, predictor, rho=0.0, mu=0.05, iterations=4)) > 0.99
    assert share(TFG(den, predictor, rho=1.0), Recurrent(DDIM(eta=1.0), 3)) > 0.95


def test_the_guidance_method_builds_tfg_from_a_noise_aware_classifier():
    sch = schedules.VPLinear()
    g = guided(MIX.denoiser(sch), "tfg", 2.0, classifier=MIX.classifier(sch), mu=0.01, iterations=2)
    assert isinstance(g, TFG) and (g.rho, g.mu, g.iterations) == (2.0, 0.01, 2)
    with pytest.raises(ValueError, match="needs a predictor"):
        guided(MIX.denoiser(sch), "tfg", 2.0)
    with pytest.raises(ValueError, match="unknown option"):
        guided(MIX.denoiser(sch), "tfg", 2.0, classifier=MIX.classifier(sch), zeta=1.0)


def test_recurrence_repeats_each_step_after_the_exact_forward_transition():
    sch = schedules.VPLinear()
    ts = grids.logsnr_grid(6, sch)
    plan = Recurrent(DDIM(eta=1.0), 3).prepare(sch, ts)
    assert plan.nfe == 3 * 6  # the last step, to t = 0, too
    for (t, s, row) in zip(plan.t, plan.s, plan.coef):
        # x_t = c_x x_s + c_z z reproduces the forward kernel from s to t
        assert row.c_x == pytest.approx(float(sch.alpha(t) / sch.alpha(s)))
        assert (row.c_x * float(sch.sigma(s))) ** 2 + row.c_z ** 2 == pytest.approx(float(sch.sigma(t)) ** 2)
    x = _x()
    den = gaussian([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]]).denoiser(sch)
    one = sample(den, Recurrent(DDIM(eta=1.0), 1), ts, x, noise=torch.Generator().manual_seed(1)).x
    plain = sample(den, DDIM(eta=1.0), ts, x, noise=torch.Generator().manual_seed(1)).x
    assert torch.equal(one, plain)
    with pytest.raises(ValueError, match="carries history"):
        Recurrent(DPMSolverPP())

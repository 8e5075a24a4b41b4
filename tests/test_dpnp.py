"""DPnP against the exact Gaussian posterior: its likelihood step is the exact conditional Gaussian,
and its samples approach the posterior as the annealing and the denoising steps are refined."""

import pytest
import torch

from sdeflow import GeneratorNoise, schedules
from sdeflow.inverse import Nonlinear, solve
from sdeflow.inverse.dpnp import dpnp
from sdeflow.inverse.methods import default_grid
from test_inverse import gaussian_problem


def test_the_likelihood_step_is_the_exact_conditional_gaussian():
    """``z ~ N(z; x, eta^2 I) N(y; A z, s^2 I)``: mean ``x + eta^2 A^T (eta^2 A A^T + s^2)^-1 (y - A x)`` and
    covariance ``eta^2 I - eta^4 A^T (eta^2 A A^T + s^2)^-1 A``, to the Monte Carlo error of 200000 draws."""
    _, op, y, _ = gaussian_problem()
    g = torch.Generator().manual_seed(0)
    n, eta, s = 200_000, 0.6, 0.1
    x = torch.randn(1, 6, generator=g, dtype=torch.float64).expand(n, 6)
    z = op.conditional_draw(x + eta * torch.randn(n, 6, generator=g, dtype=torch.float64), eta ** 2, y, s,
                            torch.randn(n, 3, generator=g, dtype=torch.float64))
    A = op.matrix()
    gain = eta ** 2 * A.T @ torch.linalg.inv(eta ** 2 * A @ A.T + s ** 2 * torch.eye(3, dtype=torch.float64))
    mean, cov = x[0] + gain @ (y - A @ x[0]), eta ** 2 * torch.eye(6, dtype=torch.float64) - eta ** 2 * gain @ A
    assert torch.allclose(z.mean(0), mean, atol=6 * eta / n ** 0.5)
    assert torch.allclose(torch.cov(z.T), cov, atol=6 * eta ** 2 * (2 / n) ** 0.5)


def _errors(levels, steps, n=4000):
    prior, op, y, post = gaussian_problem()
    sch = schedules.VPLinear()
    sol = dpnp(prior.denoiser(sch), op, y, 0.1, default_grid(levels, sch, 0.1), n, denoise_steps=steps,
               dtype=torch.float64, noise=GeneratorNoise(torch.Generator().manual_seed(0)))
    pc = post.covariance()
    return float((sol.x.mean(0) - post.mean()).norm()), float((torch.cov(sol.x.T) - pc).norm() / pc.norm()), sol.nfe


def test_samples_approach_the_posterior_as_the_chain_is_refined():
    """On the 6-D Gaussian prior with 3 noisy linear measurements: 10 levels of 50 denoising steps leave
    the mean 0.31 and the covariance 13% off; 40 levels 0.13 and 5% (the Monte Carlo floor of 4000
    samples is about 0.02 and 3%), at 1951 evaluations."""
    coarse, fine = _errors(10, 50), _errors(40, 50)
    assert fine[0] < 0.6 * coarse[0] and fine[1] < 0.6 * coarse[1], (coarse, fine)
    assert fine[0] < 0.2 and fine[1] < 0.08 and fine[2] == 39 * 50 + 1, fine


def test_dpnp_runs_by_name_and_refuses_a_nonlinear_operator():
    prior, op, y, _ = gaussian_problem()
    den = prior.denoiser(schedules.VPLinear())
    sol = solve("dpnp", den, op, y, 0.1, 40, 16, denoise_steps=4)
    assert sol.x.shape == (16, 6) and sol.nfe <= 40 and sol.method == "dpnp"
    with pytest.raises(ValueError, match="linear operators"):
        solve("dpnp", den, Nonlinear(lambda x: x[:, :3] ** 2, (6,)), y, 0.1, 40, 16)

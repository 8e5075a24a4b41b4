"""Deterministic samplers converge at their declared order to the exact probability-flow map."""

import math

import pytest
import torch

from sdeflow import analytic, grids, sample
from sdeflow.cli.registry import SAMPLERS
from sdeflow.samplers import DDIM, Euler
from sdeflow.schedules import EDM, RectifiedFlow, VPLinear

DETERMINISTIC = sorted(n for n, make in SAMPLERS.items() if not make().stochastic)
GAUSS = analytic.random_mixture(4, 1, structure="full", seed=3)
CASES = {
    "vp-linear": (VPLinear(), lambda n, s: grids.uniform_grid(n)),
    "rectified-flow": (RectifiedFlow(), lambda n, s: grids.uniform_grid(n)),
    "edm": (EDM(), lambda n, s: grids.karras_grid(n, s)),
}


def endpoint_errors(sampler, sch, make_grid, steps):
    ts0 = make_grid(steps[0], sch)
    x, _ = GAUSS.sample_t(64, sch, float(ts0[0]), torch.Generator().manual_seed(0))
    exact = GAUSS.flow_map(x, sch, float(ts0[0]), float(ts0[-1]))
    return [(sample(GAUSS.denoiser(sch), sampler, make_grid(n, sch), x).x - exact).pow(2).sum(1).mean().sqrt().item()
            for n in steps]


def fitted_order(steps, errs):
    lx = torch.log(torch.tensor(steps, dtype=torch.float64))
    ly = torch.log(torch.tensor(errs, dtype=torch.float64))
    return -float(((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum())


@pytest.mark.parametrize("name", DETERMINISTIC)
@pytest.mark.parametrize("case", sorted(CASES))
def test_convergence_order(name, case):
    sampler = SAMPLERS[name]()
    sch, make_grid = CASES[case]
    steps = [16, 32, 64, 128]
    errs = endpoint_errors(sampler, sch, make_grid, steps)
    order = fitted_order(steps, errs)
    assert abs(order - sampler.order) <= 0.3, f"{name} on {case}: fitted order {order:.2f}, errors {errs}"


def test_ddim_equals_euler_where_the_schedule_is_linear_in_sigma():
    """With alpha = 1 (EDM) or rectified flow, the exponential integrator and Euler coincide."""
    for sch, ts in [(EDM(), grids.karras_grid(9, EDM())), (RectifiedFlow(), grids.uniform_grid(9))]:
        x, _ = GAUSS.sample_t(16, sch, float(ts[0]), torch.Generator().manual_seed(1))
        a = sample(GAUSS.denoiser(sch), DDIM(), ts, x).x
        b = sample(GAUSS.denoiser(sch), Euler(), ts, x).x
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_ddim_is_exact_for_a_point_mass():
    """For a point mass x_hat is constant, so DDIM (exact with frozen x_hat) hits the exact map in one step."""
    point = analytic.gaussian(torch.tensor([0.7, -0.2], dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    sch = VPLinear()
    x, _ = point.sample_t(8, sch, 0.9, torch.Generator().manual_seed(2))
    out = sample(point.denoiser(sch), DDIM(), torch.tensor([0.9, 0.3], dtype=torch.float64), x).x
    assert torch.allclose(out, point.flow_map(x, sch, 0.9, 0.3), atol=1e-12)


@pytest.mark.parametrize("sch", [VPLinear(), RectifiedFlow()], ids=["vp", "rf"])
def test_ddim_eta_one_samples_the_exact_distribution(sch):
    """DDPM-like ancestral sampling: mean and covariance of the samples match the data within
    Monte Carlo error (5 standard errors) plus the O(1/n) discretisation bias."""
    from sdeflow.noise import GeneratorNoise

    g = analytic.random_mixture(2, 1, structure="full", seed=4)
    n = 40_000
    x, _ = g.sample_t(n, sch, 1.0, torch.Generator().manual_seed(3))
    out = sample(g.denoiser(sch), DDIM(eta=1.0), grids.uniform_grid(200), x,
                 noise=GeneratorNoise(torch.Generator().manual_seed(4))).x
    cov = g.covariance()
    se = (cov.diagonal() / n).sqrt()
    assert ((out.mean(0) - g.mean()).abs() < 5 * se + 0.01).all()
    assert torch.allclose(torch.cov(out.T), cov, atol=5 * float(cov.diagonal().max()) * math.sqrt(2 / n) + 0.01)

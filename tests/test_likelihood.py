"""Probability-flow log-likelihood against the exact mixture density: the exact trace to 1e-4 nats in
every parameterization, Hutchinson's estimator unbiased with variance falling as 1/K, the fixed
grids converging at their orders, gradients against the exact score and finite differences."""

import math

import pytest
import torch

from sdeflow import analytic
from sdeflow.denoisers import ModelDenoiser
from sdeflow.likelihood import log_likelihood
from sdeflow.parameterizations import as_parameterization
from sdeflow.schedules import EDM, RectifiedFlow, VPLinear

RING = analytic.ring_2d()


def oracle_model(mix, sch, param):
    """The exact field as a network in parameterization ``param`` with time input ``t``."""
    p = as_parameterization(param)

    def net(x_in, c):
        t = c.to(torch.float64)
        x_t = x_in.to(torch.float64) / p.input_scale(sch, t).reshape(-1, *([1] * (x_in.ndim - 1)))
        return p.from_x_hat(mix.x_hat(x_t, sch, t), x_t, sch, t).to(x_in.dtype)

    return ModelDenoiser(net, sch, param, time_input="t")


def data(mix, n, seed=0):
    return mix.sample_t(n, VPLinear(), 0.0, torch.Generator().manual_seed(seed))[0].double()


CASES = {"vp-eps": (VPLinear(), "eps"), "vp-v": (VPLinear(), "v"), "vp-x0": (VPLinear(), "x0"),
         "vp-score": (VPLinear(), "score"), "rf-velocity": (RectifiedFlow(), "velocity"), "edm-edm": (EDM(), "edm")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_trace_gives_the_mixture_density(case):
    sch, param = CASES[case]
    den = oracle_model(RING, sch, param)
    x = data(RING, 6)
    r = log_likelihood(den, x, rtol=1e-8, atol=1e-8, log_prior=lambda xe: RING.log_prob_t(xe, sch, 1.0))
    exact = RING.log_prob_t(x, sch, r.t_min)
    assert float((r.log_prob - exact).abs().max()) <= 1e-4
    assert torch.equal(r.stderr, torch.zeros(6, dtype=torch.float64))


def test_64d_low_rank_mixture():
    mix = analytic.random_mixture(64, 4, structure="lowrank", seed=3)
    sch = VPLinear()
    x = data(mix, 2, seed=1)
    r = log_likelihood(mix.denoiser(sch), x, rtol=1e-6, atol=1e-6, log_prior=lambda xe: mix.log_prob_t(xe, sch, 1.0))
    assert float((r.log_prob - mix.log_prob_t(x, sch, r.t_min)).abs().max()) <= 1e-4


def test_default_prior_is_exact_where_the_schedule_reaches_pure_noise():
    """Rectified flow ends at N(0, I) exactly: the default Gaussian prior needs no correction. VP linear
    keeps alpha(1) = 6.7e-3 of the data, which the prior with data_std accounts for approximately."""
    sch = RectifiedFlow()
    x = data(RING, 6)
    r = log_likelihood(RING.denoiser(sch), x, rtol=1e-8, atol=1e-8)
    assert float((r.log_prob - RING.log_prob_t(x, sch, r.t_min)).abs().max()) <= 1e-4
    # VP linear keeps alpha(1) = 6.7e-3 of the data: the standard-normal prior is off by about 1e-3 nats
    # on the ring (stated in the module docstring), more than the integration error
    vp = VPLinear()
    plain = log_likelihood(RING.denoiser(vp), x, rtol=1e-8, atol=1e-8)
    mismatch = float((plain.log_prob - RING.log_prob_t(x, vp, plain.t_min)).abs().max())
    assert 1e-4 < mismatch < 5e-3
    # the mismatch is the data's mean, alpha(1) * mean: a prior centred there removes most of it (measured
    # on 64 points: 150x on the ring, 38x on the 64-D mixture; data_std alone: 1.04x)
    std = float(torch.diagonal(RING.covariance()).mean().sqrt())
    centred = log_likelihood(RING.denoiser(vp), x, rtol=1e-8, atol=1e-8, data_std=std, data_mean=RING.mean())
    assert float((centred.log_prob - RING.log_prob_t(x, vp, centred.t_min)).abs().max()) < mismatch / 10


@pytest.mark.parametrize("cond", [10.0, 300.0])
def test_to_data_corrects_the_density_at_t_min_to_the_datas(cond):
    """The heat-equation step from ``log p_{t_min}(alpha x)`` to ``log p_0(x)``, with the exact field on a
    64-D mixture of condition number ``cond``: the gap log p_{t_min}(x) - log p_0(x) (measured 3.6e-5 and
    7.7e-4 on average) shrinks more than a hundredfold (measured 2.6e4x and 1.5e3x); the ODE estimate
    with to_data=True lands within its integration error of log p_0."""
    from sdeflow.likelihood import default_t_min, heat_correction

    d, sch = 64, VPLinear()
    base = analytic.random_mixture(d, 4, seed=3)
    var = torch.logspace(0, -math.log10(cond), d, dtype=torch.float64) * 0.5
    mix = analytic.GaussianMixture(base.weights, base.means, var.expand(4, d).clone())
    x = mix.sample(64, torch.Generator().manual_seed(0))
    t = default_t_min(sch)
    z = float(sch.alpha(t)) * x
    gap = (mix.log_prob_t(x, sch, t) - mix.log_prob(x)).abs().mean()
    left = (mix.log_prob_t(z, sch, t) + heat_correction(mix.denoiser(sch), z, t) - mix.log_prob(x)).abs().mean()
    assert left < gap / 100, (float(left), float(gap))
    r = log_likelihood(mix.denoiser(sch), x[:4], rtol=1e-8, atol=1e-8, to_data=True,
                       log_prior=lambda xe: mix.log_prob_t(xe, sch, 1.0))
    assert r.at == "data" and float((r.log_prob - mix.log_prob(x[:4])).abs().max()) < 1e-4


def test_hutchinson_is_unbiased_with_variance_falling_as_one_over_k():
    mix = analytic.random_mixture(16, 3, seed=5)
    sch = VPLinear()
    den = mix.denoiser(sch)
    x = data(mix, 6, seed=2)
    kw = dict(method="rk4", steps=8)
    exact = log_likelihood(den, x, **kw).log_prob
    for probe in ("rademacher", "gaussian"):
        few = log_likelihood(den, x, trace="hutchinson", probes=16, probe=probe, generator=torch.Generator().manual_seed(1), **kw)
        many = log_likelihood(den, x, trace="hutchinson", probes=256, probe=probe, generator=torch.Generator().manual_seed(2), **kw)
        assert bool(((many.log_prob - exact).abs() <= 4 * many.stderr).all())
        assert bool(((few.log_prob - exact).abs() <= 4 * few.stderr).all())
        ratio = float(few.stderr.pow(2).mean() / many.stderr.pow(2).mean())  # 16 if the variance goes as 1/K
        assert 8 < ratio < 32


@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_fixed_grids_converge_at_their_order(method, order):
    sch = RectifiedFlow()
    den = RING.denoiser(sch)
    x = data(RING, 4)
    prior = lambda xe: RING.log_prob_t(xe, sch, 1.0)  # noqa: E731
    exact = RING.log_prob_t(x, sch, log_likelihood(den, x[:1], method="euler", steps=1).t_min)
    errs = [float((log_likelihood(den, x, method=method, steps=n, log_prior=prior).log_prob - exact).abs().max())
            for n in (128, 256)]
    assert math.log2(errs[0] / errs[1]) > order - 0.5


@pytest.mark.parametrize("method,order", [("dpm-solver++-2m", 2), ("unipc-bh2", 3), ("ipndm", 2), ("bdia", 2)])
def test_any_fixed_grid_sampler_integrates_the_divergence_at_its_order(method, order):
    """The divergence accumulator rides along as one more coordinate of the probability-flow form, so a
    sampler's step rules carry the likelihood at the sampler's own order on these logSNR grids (UniPC-bh2:
    its corrector makes it third order; iPNDM: second order off grids uniform in sigma / alpha)."""
    sch = VPLinear()
    den = RING.denoiser(sch)
    x = data(RING, 4)
    prior = lambda xe: RING.log_prob_t(xe, sch, 1.0)  # noqa: E731
    errs = []
    for n in (128, 256):
        r = log_likelihood(den, x, method=method, steps=n, log_prior=prior)
        errs.append(float((r.log_prob - RING.log_prob_t(x, sch, r.t_min)).abs().max()))
    assert abs(math.log2(errs[0] / errs[1]) - order) < 0.4, errs


def test_generation_with_log_prob_follows_the_samplers_own_path():
    """The state of the augmented run is the sampler's sample on the same grid: the accumulator leaves the
    path untouched."""
    from sdeflow import sample
    from sdeflow.likelihood import logsnr_grid, sample_with_log_prob
    from sdeflow.samplers import UniPC

    sch = RectifiedFlow()
    den = RING.denoiser(sch)
    z = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    r = sample_with_log_prob(den, z, method=UniPC(order=2), steps=10)
    plain = sample(den, UniPC(order=2), logsnr_grid(sch, r.t_min, r.t_max, 10).flip(0), z)
    assert torch.allclose(r.x_end, plain.x, rtol=0, atol=1e-12) and r.nfe == plain.nfe


def test_gradient_is_the_exact_score_and_matches_finite_differences():
    """d log p_{t_min}(x) / dx is the exact score at t_min; the fixed-grid map is differentiated exactly."""
    sch = VPLinear()
    den = RING.denoiser(sch)
    x = data(RING, 3).requires_grad_(True)
    prior = lambda xe: RING.log_prob_t(xe, sch, 1.0)  # noqa: E731
    r = log_likelihood(den, x, rtol=1e-9, atol=1e-9, log_prior=prior, create_graph=True)
    g, = torch.autograd.grad(r.log_prob.sum(), x)
    assert torch.allclose(g, RING.score(x.detach(), sch, r.t_min), rtol=1e-4, atol=1e-4)
    fixed = lambda z: log_likelihood(den, z, method="rk4", steps=12, log_prior=prior, create_graph=True).log_prob  # noqa: E731
    g, = torch.autograd.grad(fixed(x).sum(), x)
    h, fd = 1e-5, torch.zeros_like(g)
    with torch.no_grad():
        for i in range(2):
            e = torch.zeros_like(x)
            e[:, i] = h
            fd[:, i] = (fixed(x + e) - fixed(x - e)) / (2 * h)
    assert torch.allclose(g, fd, rtol=1e-6, atol=1e-6)


def test_gradient_reaches_network_parameters():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    den = ModelDenoiser(lambda x, c: net(torch.cat([x, c[:, None]], 1)), VPLinear(), "eps")
    x = data(RING, 4)
    loss = -log_likelihood(den, x, method="heun", steps=6, create_graph=True).log_prob.mean()
    loss.backward()
    w = net[0].weight
    assert w.grad is not None and bool(torch.isfinite(w.grad).all()) and float(w.grad.abs().sum()) > 0
    h = 1e-6
    with torch.no_grad():
        w[0, 0] += h
        up = -log_likelihood(den, x, method="heun", steps=6).log_prob.mean()
        w[0, 0] -= 2 * h
        down = -log_likelihood(den, x, method="heun", steps=6).log_prob.mean()
        w[0, 0] += h
    assert abs(float(w.grad[0, 0]) - float(up - down) / (2 * h)) < 1e-5 * max(1.0, abs(float(w.grad[0, 0])))


def test_bits_per_dimension_on_a_lattice():
    sch = RectifiedFlow()
    x = data(RING, 2)
    r = log_likelihood(RING.denoiser(sch), x, method="rk4", steps=8)
    d = 2
    assert torch.allclose(r.bits_per_dim(), -r.log_prob / (d * math.log(2)))
    # 17 grey levels over [0, 16] (scikit-learn's digits): the bin of width 1 has probability ~ p(x) * 1
    assert torch.allclose(r.bits_per_dim(levels=17, scale=16.0), -r.log_prob / (d * math.log(2)))
    assert torch.allclose(r.bits_per_dim(levels=256, scale=2.0), (-r.log_prob - d * math.log(2 / 255)) / (d * math.log(2)))


def test_a_discrete_schedule_starts_at_its_first_training_step():
    """The default t_min of a 1000-step DDPM schedule is its smallest time (noise level 1e-2 > 1e-3), which is
    inside its domain: the likelihood there is the exact noised density. Its log alpha is linear between
    training steps, with a kink at each: solvers lose their order across kinks, and the error (1e-3 at 64
    RK4 steps, 3e-3 at dopri5 tol 1e-6) falls slowly."""
    from sdeflow.schedules import ddpm_linear

    sch = ddpm_linear()
    x = data(RING, 3)
    r = log_likelihood(RING.denoiser(sch), x, method="rk4", steps=64, log_prior=lambda xe: RING.log_prob_t(xe, sch, 1.0))
    assert r.t_min == sch.t_min
    assert float((r.log_prob - RING.log_prob_t(x, sch, sch.t_min)).abs().max()) <= 1e-2
    with pytest.raises(ValueError, match="smallest time"):
        log_likelihood(RING.denoiser(sch), x, t_min=sch.t_min / 2)


def test_bad_input_is_refused():
    den = RING.denoiser(VPLinear())
    x = data(RING, 2)
    for kw, match in [(dict(trace="jacobian"), "trace"), (dict(probe="uniform", trace="hutchinson"), "probe"),
                      (dict(method="rk45"), "method"), (dict(method="ddpm"), "method"), (dict(probes=0), "probes"),
                      (dict(method="rk4", steps=0), "steps"),
                      (dict(t_min=0.0), "t_min"), (dict(t_min=0.5, t_max=0.4), "t_min"), (dict(rtol=0.0), "rtol")]:
        with pytest.raises(ValueError, match=match):
            log_likelihood(den, x, **kw)
    with pytest.raises(TypeError, match="floating-point"):
        log_likelihood(den, torch.zeros(2, 2, dtype=torch.long))


def test_log_density_of_generated_samples():
    """Generating by the ODE with the divergence integrated on the same grid gives each sample's
    log-density: against the exact density of the generated point, converging with the grid."""
    from sdeflow.likelihood import sample_with_log_prob

    sch = RectifiedFlow()
    den = RING.denoiser(sch)
    z = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    errs = []
    for steps in (32, 128):
        r = sample_with_log_prob(den, z, steps=steps, log_prior=lambda xe: RING.log_prob_t(xe, sch, 1.0))
        assert r.nfe == 4 * steps
        errs.append(float((r.log_prob - RING.log_prob_t(r.x_end, sch, r.t_min)).abs().max()))
    assert errs[1] < 1e-3 and errs[1] < errs[0] / 8
    with pytest.raises(ValueError, match="fixed-grid"):
        sample_with_log_prob(den, z, method="dopri5")


def test_discrete_vlb_bounds_the_exact_nll_and_tightens_with_steps():
    """On a DDPM schedule with the exact denoiser: the variational bound lies above the exact NLL on
    average (a bound) and falls as the grid of training steps is refined (nested grids)."""
    from sdeflow.likelihood import discrete_vlb
    from sdeflow.schedules import ddpm_linear

    sch = ddpm_linear()
    x = RING.sample_t(256, sch, 0.0, torch.Generator().manual_seed(0))[0].double()
    nll = -RING.log_prob(x)
    bounds = []
    for stride in (40, 8, 1):
        idx = sorted(set(range(0, 1000, stride)) | {999})
        r = discrete_vlb(RING.denoiser(sch), x, times=sch.t_from_index(torch.tensor(idx, dtype=torch.float64)),
                         generator=torch.Generator().manual_seed(1))
        assert r.nfe == len(idx)
        gap = r.bound - nll
        assert float(gap.mean()) > 3 * float(gap.std()) / math.sqrt(len(gap))
        bounds.append(float(r.bound.mean()))
    assert bounds[0] > bounds[1] > bounds[2]
    two = discrete_vlb(RING.denoiser(sch), x[:4], times=[0.5, 0.9], draws=8, generator=torch.Generator().manual_seed(2))
    assert bool((two.stderr > 0).all()) and two.nfe == 16
    with pytest.raises(ValueError, match="times="):
        discrete_vlb(RING.denoiser(VPLinear()), x)
    with pytest.raises(ValueError, match="draws"):
        discrete_vlb(RING.denoiser(sch), x, draws=0)


def test_a_non_denoiser_is_refused_with_a_message():
    from sdeflow.likelihood import discrete_vlb, log_likelihood, sample_with_log_prob

    x = torch.zeros(2, 2, dtype=torch.float64)
    for call in (lambda: log_likelihood(lambda x, t: x, x), lambda: sample_with_log_prob(lambda x, t: x, x),
                 lambda: discrete_vlb(lambda x, t: x, x)):
        with pytest.raises(TypeError, match="sdeflow Denoiser"):
            call()

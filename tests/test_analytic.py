import math

import pytest
import torch

from sdeflow import analytic
from sdeflow.analytic import Diagonal, Full, GaussianMixture, LowRankPlusDiagonal
from sdeflow.schedules import VE, VPCosine, VPLinear, RectifiedFlow

STRUCTURES = ["diagonal", "full", "lowrank"]
SCHEDS = [VPLinear(), RectifiedFlow(), VE(), VPCosine()]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("sch", SCHEDS, ids=lambda s: type(s).__name__)
def test_score_is_gradient_of_log_density(structure, sch):
    mix = analytic.random_mixture(5, 3, structure=structure, seed=2)
    for t in [0.05, 0.4, 0.9]:
        x, _ = mix.sample_t(6, sch, t, gen())
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(mix.log_prob_t(x, sch, t).sum(), x)
        # central differences, independent of autograd
        h = 1e-5 * (1 + x.detach().abs())
        fd = torch.empty_like(grad)
        for d in range(x.shape[1]):
            e = torch.zeros_like(x)
            e[:, d] = h[:, d]
            fd[:, d] = (mix.log_prob_t(x.detach() + e, sch, t) - mix.log_prob_t(x.detach() - e, sch, t)) / (2 * h[:, d])
        score = mix.score(x.detach(), sch, t)
        assert torch.allclose(score, fd, rtol=1e-5, atol=1e-5 * float(score.abs().max()))
        assert torch.allclose(score, grad, rtol=1e-9, atol=1e-9 * float(score.abs().max()))


def test_structures_agree():
    """Diagonal and low-rank covariances give the same answers as their dense Full versions."""
    for structure in ["diagonal", "lowrank"]:
        mix = analytic.random_mixture(6, 3, structure=structure, seed=4)
        dense = GaussianMixture(mix.weights, mix.means, Full(mix.cov.dense()))
        sch = VPLinear()
        x, _ = mix.sample_t(10, sch, 0.3, gen())
        t = torch.linspace(0.1, 0.9, 10, dtype=torch.float64)  # per-sample times
        assert torch.allclose(mix.log_prob_t(x, sch, t), dense.log_prob_t(x, sch, t), rtol=1e-10)
        assert torch.allclose(mix.x_hat(x, sch, t), dense.x_hat(x, sch, t), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_a_batch_at_one_time_is_each_sample_alone(structure):
    """A batch whose samples share one time (a scalar, or a (B,) time of equal values, whose per-time
    terms the mixture computes once) gives each sample's answer alone; a time that carries a gradient
    keeps its own per-sample derivative."""
    mix = analytic.random_mixture(5, 3, structure=structure, seed=6)
    sch = VPLinear()
    x, _ = mix.sample_t(7, sch, 0.4, gen())
    alone = torch.cat([mix.x_hat(x[i:i + 1], sch, torch.tensor([0.4], dtype=torch.float64)) for i in range(7)])
    for t in (0.4, torch.tensor(0.4, dtype=torch.float64), torch.full((7,), 0.4, dtype=torch.float64)):
        assert torch.allclose(mix.x_hat(x, sch, t), alone, rtol=1e-12, atol=1e-12)
        assert torch.allclose(mix.log_prob_t(x, sch, t),
                              torch.cat([mix.log_prob_t(x[i:i + 1], sch, 0.4) for i in range(7)]), rtol=1e-12)
    t = torch.full((7,), 0.4, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(mix.x_hat(x, sch, t)[:, 0].sum(), t)
    h = 1e-6
    fd = (mix.x_hat(x, sch, 0.4 + h)[:, 0] - mix.x_hat(x, sch, 0.4 - h)[:, 0]) / (2 * h)
    # sample i's output moves with its own time only; central differences at h = 1e-6 agree to 6e-9
    # relative (5e-10 absolute) at most, a gradient summed onto one sample's time is off by O(1)
    assert torch.allclose(grad, fd, rtol=1e-7, atol=1e-8)


def test_density_normalised_2d():
    mix = analytic.ring_2d()
    sch = VPLinear()
    u = torch.linspace(-4, 4, 401, dtype=torch.float64)
    gx, gy = torch.meshgrid(u, u, indexing="ij")
    pts = torch.stack([gx.flatten(), gy.flatten()], 1)
    for t in [0.0, 0.2]:
        p = (mix.log_prob(pts) if t == 0 else mix.log_prob_t(pts, sch, t)).exp()
        assert float(p.sum() * (u[1] - u[0]) ** 2) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_noised_marginal_moments_monte_carlo(structure):
    """Exact samples of p_t have mean alpha m and covariance alpha^2 C + sigma^2 I (within 5 standard errors)."""
    mix = analytic.random_mixture(4, 3, structure=structure, seed=5)
    sch, t, n = VPLinear(), 0.3, 200_000
    x_t, _ = mix.sample_t(n, sch, t, gen(1))
    a, s = float(sch.alpha(t)), float(sch.sigma(t))
    cov = a * a * mix.covariance() + s * s * torch.eye(4, dtype=torch.float64)
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((x_t.mean(0) - a * mix.mean()).abs() < 5 * se_mean).all()
    emp = torch.cov(x_t.T)
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov ** 2) / n).sqrt()
    assert ((emp - cov).abs() < 5 * se_cov).all()


def test_x_hat_is_the_conditional_mean():
    """Tweedie / projection property: E[(x - x_hat(x_t)) g(x_t)] = 0 for test functions g."""
    mix = analytic.random_mixture(3, 4, structure="full", seed=6)
    sch, t, n = RectifiedFlow(), 0.6, 200_000
    x_t, x = mix.sample_t(n, sch, t, gen(2))
    resid = x - mix.x_hat(x_t, sch, t)
    for g in [torch.ones(n, 1, dtype=torch.float64), x_t, torch.tanh(x_t)]:
        prod = resid[:, :, None] * g[:, None, :]
        m, se = prod.mean(0), prod.std(0) / math.sqrt(n)
        assert (m.abs() < 5 * se + 1e-12).all()
    # and x_hat beats a wrong estimator in mean squared error
    assert resid.pow(2).sum(1).mean() < (x - 1.05 * mix.x_hat(x_t, sch, t)).pow(2).sum(1).mean()


def test_posterior_matches_bruteforce_bayes_2d():
    mix = analytic.ring_2d()
    A = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    y = torch.tensor([1.2], dtype=torch.float64)
    noise = 0.3
    post = mix.posterior(A, y, noise)
    u = torch.linspace(-4, 4, 801, dtype=torch.float64)
    gx, gy = torch.meshgrid(u, u, indexing="ij")
    pts = torch.stack([gx.flatten(), gy.flatten()], 1)
    logp = mix.log_prob(pts) - 0.5 * ((pts @ A.T - y) ** 2).sum(1) / noise ** 2
    w = torch.softmax(logp, 0)
    mean = w @ pts
    cov = (pts - mean).T @ ((pts - mean) * w[:, None])
    assert torch.allclose(post.mean(), mean, atol=1e-4)
    assert torch.allclose(post.covariance(), cov, atol=1e-4)
    # the log-density is the normalised Bayes posterior
    cell = float((u[1] - u[0]) ** 2)
    brute = logp - torch.logsumexp(logp, 0) - math.log(cell)
    probe = torch.tensor([[1.5, 1.0], [0.3, 1.6], [2.0, -0.5]], dtype=torch.float64)
    idx = [int(torch.argmin((pts - p).pow(2).sum(1))) for p in probe]
    assert torch.allclose(post.log_prob(pts[idx]), brute[idx], atol=2e-3)
    # exact posterior samples have the posterior moments
    smp = post.sample(100_000, gen(3))
    assert torch.allclose(smp.mean(0), mean, atol=0.01)


def test_posterior_noiseless_projection():
    """Noise-free observation of one coordinate: the posterior puts that coordinate at y exactly."""
    mix = analytic.random_mixture(3, 2, structure="lowrank", seed=7)
    A = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    post = mix.posterior(A, torch.tensor([0.4]), 0.0)
    smp = post.sample(1000, gen(4))
    assert torch.allclose(smp[:, 1], torch.full((1000,), 0.4, dtype=torch.float64), atol=1e-6)


@pytest.mark.parametrize("sch", SCHEDS, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("structure", STRUCTURES)
def test_flow_map_solves_the_probability_flow_ode(sch, structure):
    solve_ivp = pytest.importorskip("scipy.integrate").solve_ivp
    g = analytic.random_mixture(3, 1, structure=structure, seed=8)
    x1, _ = g.sample_t(4, sch, 0.9, gen(5))
    exact = g.flow_map(x1, sch, 0.9, 0.05)

    def rhs(t, y):
        return g.velocity(torch.from_numpy(y).reshape(4, 3), sch, t).flatten().numpy()

    sol = solve_ivp(rhs, (0.9, 0.05), x1.flatten().numpy(), method="DOP853", rtol=1e-11, atol=1e-11)
    assert torch.allclose(exact, torch.from_numpy(sol.y[:, -1]).reshape(4, 3), atol=1e-8)
    # semigroup property, and the map carries exact samples of p_0.9 to samples of p_0.05
    mid = g.flow_map(x1, sch, 0.9, 0.5)
    assert torch.allclose(g.flow_map(mid, sch, 0.5, 0.05), exact, atol=1e-10)


def test_flow_map_pushes_marginals():
    g = analytic.random_mixture(2, 1, structure="full", seed=9)
    sch = VPLinear()
    x1, _ = g.sample_t(200_000, sch, 1.0, gen(6))
    x0 = g.flow_map(x1, sch, 1.0, 0.0)
    assert torch.allclose(torch.cov(x0.T), g.covariance(), atol=0.01)
    assert torch.allclose(x0.mean(0), g.mean(), atol=0.01)


def test_high_dimensional_diagonal_and_lowrank():
    """Thousands of dimensions: x_hat for one diagonal Gaussian has the per-coordinate closed form."""
    d = 3072
    mean = torch.randn(d, dtype=torch.float64, generator=gen(7))
    var = torch.rand(d, dtype=torch.float64, generator=gen(8)) + 0.01
    g = analytic.gaussian(mean, var)
    sch, t = VPLinear(), 0.4
    x, _ = g.sample_t(8, sch, t, gen(9))
    a, s = sch.alpha(t), sch.sigma(t)
    expected = mean + a * var / (a * a * var + s * s) * (x - a * mean)
    assert torch.allclose(g.x_hat(x.reshape(8, 3, 32, 32), sch, t).reshape(8, d), expected, rtol=1e-10)
    lr = GaussianMixture(torch.ones(3), torch.randn(3, d, dtype=torch.float64, generator=gen(10)),
                         LowRankPlusDiagonal(torch.full((3, d), 0.1, dtype=torch.float64),
                                             torch.randn(3, d, 8, dtype=torch.float64, generator=gen(11)) / 30))
    x, _ = lr.sample_t(8, sch, t, gen(12))
    assert torch.isfinite(lr.log_prob_t(x, sch, t)).all() and torch.isfinite(lr.x_hat(x, sch, t)).all()


def test_oracle_denoiser_keeps_dtype_and_bad_inputs():
    mix = analytic.ring_2d()
    den = mix.denoiser(VPLinear())
    x = torch.randn(5, 2, dtype=torch.bfloat16)
    assert den(x, 0.5).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dimension"):
        mix.x_hat(torch.randn(5, 3), VPLinear(), 0.5)
    with pytest.raises(ValueError):
        GaussianMixture(torch.ones(2), torch.zeros(2, 3), torch.ones(3, 3))
    with pytest.raises(ValueError, match="single Gaussian"):
        mix.flow_map(torch.randn(2, 2), VPLinear(), 0.5, 0.1)
    with pytest.raises(ValueError, match="semi-definite"):
        Full(-torch.eye(2)[None])
    with pytest.raises(ValueError):
        Diagonal(-torch.ones(1, 2))


def test_frechet_distance_between_gaussians():
    """Exact for two Gaussians given their moments (commuting covariances: the per-axis formula),
    and it shrinks like the sampling error when the samples come from the target."""
    from sdeflow import metrics

    g = torch.Generator().manual_seed(0)
    mean, var = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64), torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64)
    m2, v2 = torch.tensor([0.5, 1.0, -2.0], dtype=torch.float64), torch.tensor([2.0, 4.0, 1.0], dtype=torch.float64)
    z = torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    z = (z - z.mean(0)) / z.std(0)              # exact sample moments
    x = m2 + z * v2.sqrt()
    exact = math.sqrt(0.25 + float(((var.sqrt() - v2.sqrt()) ** 2).sum()))
    assert metrics.frechet_distance(x, mean, torch.diag(var)) == pytest.approx(exact, rel=1e-3)
    small = metrics.frechet_distance(mean + torch.randn(1000, 3, generator=g, dtype=torch.float64) * var.sqrt(), mean, torch.diag(var))
    large = metrics.frechet_distance(mean + torch.randn(100, 3, generator=g, dtype=torch.float64) * var.sqrt(), mean, torch.diag(var))
    assert small < large < 1.0


def test_tilt_by_a_linear_reward_is_exact():
    """log q(x) - log p(x) - b^T x is one constant, -log E_p[exp(b^T x)], for the tilted mixture q."""
    from sdeflow.analytic import random_mixture

    mix = random_mixture(3, 4, structure="full", seed=7)
    b = torch.tensor([0.7, -0.4, 0.3], dtype=torch.float64)
    q = mix.tilted(b)
    x = mix.sample(200, torch.Generator().manual_seed(0))
    gap = q.log_prob(x) - mix.log_prob(x) - x @ b
    assert float(gap.max() - gap.min()) < 1e-10
    e = torch.exp(mix.sample(400_000, torch.Generator().manual_seed(1)) @ b)
    log_z, se = torch.log(e.mean()), e.std() / e.mean() / math.sqrt(len(e))
    assert abs(float(-gap[0] - log_z)) < 4 * float(se)


def test_noised_mixture_is_the_marginal_at_t():
    from sdeflow.analytic import random_mixture
    from sdeflow.schedules import VPLinear

    mix, sch = random_mixture(3, 4, structure="lowrank", rank=2, seed=2), VPLinear()
    x_t, _ = mix.sample_t(50, sch, 0.4, torch.Generator().manual_seed(0))
    assert torch.allclose(mix.noised(sch, 0.4).log_prob(x_t), mix.log_prob_t(x_t, sch, 0.4), atol=1e-10)

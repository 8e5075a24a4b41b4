"""Training objectives at the exact optimum, time densities, OT coupling and EMA."""

import itertools
import math

import pytest
import torch

from sdeflow import analytic, schedules
from sdeflow.parameterizations import PARAMETERIZATIONS
from sdeflow.training import EMA, DenoisingLoss, LogitNormal, LogNormalSigma, Stratified, Uniform, UShaped, ot_pairing
from sdeflow.objectives.losses import WEIGHTINGS

D = 4
SCHEDS = {"vp": schedules.VPLinear(), "rf": schedules.RectifiedFlow(), "edm": schedules.EDM(),
          "ddpm": schedules.ddpm_linear()}


def _gaussian():
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    lam = torch.tensor([0.05, 0.3, 1.0, 2.5], dtype=torch.float64)
    mean = torch.randn(1, D, generator=g, dtype=torch.float64)
    return analytic.GaussianMixture(torch.ones(1, dtype=torch.float64), mean, ((q * lam) @ q.T)[None]), lam


def _mmse(lam, schedule, t):
    """``tr Cov[x | x_t] / D`` for Gaussian data with covariance eigenvalues ``lam``."""
    a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    return (lam * s ** 2 / (s ** 2 + a ** 2 * lam)).sum(1) / D


def _check(schedule, param, weighting, density="uniform", n=6000):
    mixture, lam = _gaussian()
    loss = DenoisingLoss(weighting, density, parameterization=param)
    g = torch.Generator().manual_seed(1)
    x = mixture.sample(n, g)
    t, eps = loss.draw(x, schedule, g)
    oracle = mixture.denoiser(schedule)
    values = loss(oracle, x, t=t, eps=eps)
    w = loss.data_weight(schedule, loss.parameterization, t)
    diff = values - w * _mmse(lam, schedule, t)
    assert abs(float(diff.mean())) < 5 * float(diff.std()) / math.sqrt(n) + 1e-12
    # A denoiser off by a constant delta pays exactly w delta^2 more (in expectation over eps).
    delta = 0.1

    class Shifted(torch.nn.Module):
        schedule = oracle.schedule

        def forward(self, x_t, tt, **c):
            return oracle(x_t, tt) + delta

    shifted = loss(Shifted(), x, t=t, eps=eps)
    extra = shifted - values
    target = w * delta ** 2
    assert abs(float((extra - target).mean())) < 5 * float((extra - target).std()) / math.sqrt(n) + 1e-6 * float(target.mean())


@pytest.mark.parametrize("sched,param", itertools.product(SCHEDS, sorted(PARAMETERIZATIONS)))
def test_oracle_loss_is_the_irreducible_value_for_every_parameterization(sched, param):
    _check(SCHEDS[sched], param, "output")


@pytest.mark.parametrize("weighting", sorted(WEIGHTINGS))
@pytest.mark.parametrize("sched", ["vp", "rf", "edm"])
def test_oracle_loss_for_every_weighting(weighting, sched):
    _check(SCHEDS[sched], "v" if sched == "vp" else "x0", weighting,
           density={"vp": "stratified", "rf": "logit-normal", "edm": "log-normal"}[sched])


def test_output_weighting_is_the_plain_mse_of_the_named_target():
    """The default weighting is the plain MSE on what the network predicts: eps on VP equals the snr
    weighting, velocity on rectified flow equals the velocity weighting."""
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    for sched, param, name in [("vp", "eps", "snr"), ("rf", "velocity", "velocity"), ("vp", "v", "v"), ("edm", "edm", "edm")]:
        s = SCHEDS[sched]
        p = PARAMETERIZATIONS[param]()
        a = DenoisingLoss("output").data_weight(s, p, t)
        b = DenoisingLoss(name).data_weight(s, p, t)
        assert torch.allclose(a, b, rtol=1e-9), (sched, param)


def test_time_densities():
    g = torch.Generator().manual_seed(0)
    n = 40000
    vp, edm = schedules.VPLinear(), schedules.EDM()
    t = Uniform().sample(n, vp, g)
    assert abs(float(t.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / n)
    t = LogitNormal(0.5, 0.8).sample(n, vp, g)
    z = torch.logit(t)
    assert abs(float(z.mean()) - 0.5) < 5 * 0.8 / math.sqrt(n) and abs(float(z.std()) - 0.8) < 0.02
    for sched in (vp, edm):
        t = LogNormalSigma(-1.2, 1.2).sample(n, sched, g)
        ls = torch.log(sched.noise_to_signal(t))
        inside = (ls > -4) & (ls < 1.5)  # away from the clamp of t to [1e-5, 1 - 1e-5]
        assert abs(float(ls[inside].mean()) + 1.2) < 0.1 and float(inside.double().mean()) > 0.97
    t = Stratified().sample(1000, vp, g)
    assert torch.equal(torch.sort(torch.floor(t * 1000)).values, torch.arange(1000, dtype=torch.float64))
    ddpm = schedules.ddpm_linear()
    for density in (Uniform(), Stratified(), LogitNormal()):
        idx = ddpm.index_from_t(density.sample(5000, ddpm, g))
        assert torch.allclose(idx, idx.round(), atol=1e-9) and idx.min() >= 0 and idx.max() <= 999
    idx = ddpm.index_from_t(Uniform().sample(100000, ddpm, g)).round()
    assert abs(float(idx.mean()) - 499.5) < 5 * 288.7 / math.sqrt(100000)


def test_u_shaped_density_follows_its_cdf():
    # p(t) ~ cosh(a (t - 1/2)): Kolmogorov-Smirnov distance to the exact CDF, and its symmetry
    a, n = 4.0, 40000
    t = torch.sort(UShaped(a).sample(n, schedules.RectifiedFlow(), torch.Generator().manual_seed(0))).values
    cdf = (torch.sinh(a * (t - 0.5)) + math.sinh(a / 2)) / (2 * math.sinh(a / 2))
    ks = torch.maximum(torch.arange(1, n + 1) / n - cdf, cdf - torch.arange(n) / n).max()
    assert float(ks) < 1.63 / math.sqrt(n)  # the 1% critical value
    assert abs(float(t.mean()) - 0.5) < 0.01 and float((t < 0.1).double().mean()) > 2 * float(((t > 0.45) & (t < 0.55)).double().mean())


def test_ot_pairing_is_the_exact_assignment():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, e = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
        def cost(perm):
            return float(((x - e[list(perm)]) ** 2).sum())
        best = min(cost(p) for p in itertools.permutations(range(6)))
        assert cost(ot_pairing(x, e).tolist()) == pytest.approx(best, rel=1e-9)
    x, e = torch.randn(256, 2, generator=g), torch.randn(256, 2, generator=g)
    assert torch.equal(torch.sort(ot_pairing(x, e)).values, torch.arange(256))


def test_ot_coupling_leaves_the_noise_marginal_and_lowers_the_transport_cost():
    loss = DenoisingLoss("output", ot_coupling=True, parameterization="velocity")
    x = torch.randn(128, 2) * 0.1 + 3.0
    g = torch.Generator().manual_seed(0)
    t, eps = loss.draw(x, schedules.RectifiedFlow(), g)
    paired = eps[ot_pairing(x, eps)]
    assert torch.equal(torch.sort(paired.flatten()).values, torch.sort(eps.flatten()).values)
    assert ((x - paired) ** 2).sum() < ((x - eps) ** 2).sum()


def test_ema_update_rule():
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, decay=0.9)
    start = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)  # warm-up decay min(0.9, 1/10) = 0.1
    for p0, pe, p in zip(start, ema.model.parameters(), net.parameters()):
        assert torch.allclose(pe, 0.1 * p0 + 0.9 * p, atol=1e-6)
    for _ in range(300):
        ema.update(net)
    for pe, p in zip(ema.model.parameters(), net.parameters()):
        assert torch.allclose(pe, p, atol=1e-6)
    with pytest.raises(ValueError, match="decay"):
        EMA(net, decay=1.0)


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="allowed"):
        DenoisingLoss("nope")
    with pytest.raises(ValueError, match="allowed"):
        DenoisingLoss("output", "nope")


def test_the_fokker_planck_penalty_vanishes_for_the_exact_score_and_trains_a_network():
    """The penalty is the score Fokker-Planck residual: at most round-off (and the O(dt^2) of its time
    derivative) for the exact mixture score, and 100x more for a field with a non-score term added; on a
    network it is differentiable in the parameters (finite, non-zero gradients) and adds to the loss."""
    from sdeflow import ModelDenoiser

    mix = analytic.ring_2d()
    sch = schedules.VPLinear()
    x = mix.sample(64, torch.Generator().manual_seed(0))
    loss = DenoisingLoss(fokker_planck=1.0)
    exact = loss.fokker_planck_penalty(mix.denoiser(sch), x, generator=torch.Generator().manual_seed(1))
    assert float(exact.detach().mean()) < 1e-12  # measured 6e-19 to 1e-15 over five drawn times

    class Bent(torch.nn.Module):  # the exact x_hat plus 0.05 sin(x): not a score
        def forward(self, x_t, t):
            return mix.denoiser(sch)(x_t, t) + 0.05 * torch.sin(x_t)

    from sdeflow.denoisers import Denoiser

    class AsDenoiser(Denoiser):
        def __init__(self):
            super().__init__(sch)
            self.net = Bent()

        def forward(self, x_t, t, **cond):
            return self.net(x_t, t)

    bent = loss.fokker_planck_penalty(AsDenoiser(), x, generator=torch.Generator().manual_seed(1))
    assert float(bent.detach().mean()) > 1e-6 + 1e4 * float(exact.detach().mean())
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2)).double()
    den = ModelDenoiser(lambda x_t, c: net(torch.cat([x_t, c.reshape(-1, 1).expand(x_t.shape[0], 1)], 1)), sch, "eps")
    plain = DenoisingLoss()(den, x.double(), generator=torch.Generator().manual_seed(2))
    with_penalty = loss(den, x.double(), generator=torch.Generator().manual_seed(2))
    assert bool((with_penalty > plain).all())
    with_penalty.mean().backward()
    grads = torch.cat([p.grad.flatten() for p in net.parameters()])
    assert bool(torch.isfinite(grads).all()) and float(grads.abs().max()) > 0
    with pytest.raises(ValueError, match="fokker_planck"):
        DenoisingLoss(fokker_planck=-1.0)

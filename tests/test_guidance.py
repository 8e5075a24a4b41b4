"""Guidance, certified on labelled Gaussian mixtures whose conditional and unconditional fields and
noise-aware classifier are exact."""

import math

import pytest
import torch

from sdeflow import grids, guidance as G, metrics, samplers
from sdeflow.analytic import GaussianMixture, ring_2d, two_classes_1d
from sdeflow.denoisers import ModelDenoiser
from sdeflow.models import MLP
from sdeflow.noise import GeneratorNoise
from sdeflow.registry import SAMPLERS
from sdeflow.sampling import sample
from sdeflow.schedules import EDM, VE, RectifiedFlow, VPCosine, VPLinear

SCHEDULES = [VPLinear(), VPCosine(), VE(), EDM(), RectifiedFlow()]
RING = ring_2d(n_classes=4)


def _states(mix, sch, t, n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x, _ = mix.sample_t(n, sch, t, gen)
    return x, torch.arange(n) % mix.num_classes


# ------------------------------------------------------------------------------ the labelled oracle
@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: type(s).__name__)
def test_labelled_oracle_is_bayes_consistent(sch):
    """Conditional fields are those of the class's own mixture; p_t(c | x) sums to one over classes; and
    grad log p_t(c | x) = score(x | c) - score(x) (Bayes' rule on the noised marginals)."""
    x, lab = _states(RING, sch, 0.4)
    for c in range(RING.num_classes):
        sub = RING.conditional(c)
        assert torch.allclose(RING.x_hat(x, sch, 0.4, torch.full((64,), c)), sub.x_hat(x, sch, 0.4), atol=1e-12)
        assert torch.allclose(RING.log_prob_t(x, sch, 0.4, c), sub.log_prob_t(x, sch, 0.4), atol=1e-10)
    total = torch.stack([RING.class_log_prob(x, sch, 0.4, torch.full((64,), c)) for c in range(4)]).logsumexp(0)
    assert total.abs().max() < 1e-12
    xg = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(RING.class_log_prob(xg, sch, 0.4, lab).sum(), xg)
    assert torch.allclose(grad, RING.score(x, sch, 0.4, lab) - RING.score(x, sch, 0.4), atol=1e-9)
    # label -1 rows are unconditional, and labelled sampling draws the class's components
    mixed = torch.where(lab == 0, -1, lab)
    assert torch.allclose(RING.x_hat(x, sch, 0.4, mixed)[lab == 0], RING.x_hat(x, sch, 0.4)[lab == 0])
    comp = RING.sample_components(400, torch.Generator().manual_seed(1), 2)
    assert bool((RING.classes[comp] == 2).all())


def test_labelled_oracle_refuses_bad_labels():
    with pytest.raises(ValueError, match="classes 0..3"):
        RING.x_hat(torch.zeros(2, 2), VPLinear(), 0.5, torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="no classes"):
        ring_2d().x_hat(torch.zeros(2, 2), VPLinear(), 0.5, 1)
    with pytest.raises(ValueError, match="every class used"):
        GaussianMixture([1, 1], [[0.0], [1.0]], torch.ones(2, 1), classes=[0, 2])


# ------------------------------------------------------------------------------ rules at w = 1 and w = 0
RULES = {"cfg": lambda w: G.CFG(w), "rescale": lambda w: G.CFGRescale(w, phi=0.7),
         "apg": lambda w: G.APG(w, eta=0.3, norm_threshold=0.5), "cfg-zero": lambda w: G.CFGZeroStar(w)}


@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("name", sorted(RULES))
def test_scale_one_is_the_conditional_denoiser(name, sch):
    x, lab = _states(RING, sch, 0.5)
    pos, neg = RING.x_hat(x, sch, 0.5, lab), RING.x_hat(x, sch, 0.5)
    out = RULES[name](1.0)(pos, neg, x, 0.5, sch, {})
    assert (out - pos).abs().max() < 1e-12
    if name == "cfg":  # the affine rule gives the unconditional denoiser at w = 0
        assert (RULES[name](0.0)(pos, neg, x, 0.5, sch, {}) - neg).abs().max() < 1e-12


def test_apg_without_projection_momentum_or_cap_is_cfg_and_its_momentum_damps():
    sch = VPLinear()
    x, lab = _states(RING, sch, 0.5)
    pos, neg = RING.x_hat(x, sch, 0.5, lab), RING.x_hat(x, sch, 0.5)
    plain = G.APG(4.0, eta=1.0, momentum=0.0)(pos, neg, x, 0.5, sch, {})
    assert torch.allclose(plain, G.CFG(4.0)(pos, neg, x, 0.5, sch, {}), atol=1e-12)
    # eta = 0 removes exactly the part of the update parallel to pos
    orth = G.APG(4.0, eta=0.0, momentum=0.0)(pos, neg, x, 0.5, sch, {}) - pos
    assert (orth * pos).sum(1).abs().max() < 1e-10
    # the cap bounds the update's norm
    capped = G.APG(4.0, eta=1.0, momentum=0.0, norm_threshold=0.01)(pos, neg, x, 0.5, sch, {}) - pos
    assert capped.norm(dim=1).max() <= 3.0 * 0.01 + 1e-12
    # momentum: the second call's direction is d + beta d_prev
    state = {}
    G.APG(4.0, eta=1.0, momentum=-0.5)(pos, neg, x, 0.5, sch, state)
    second = G.APG(4.0, eta=1.0, momentum=-0.5)(pos, neg, x, 0.5, sch, state)
    assert torch.allclose(second, pos + 3.0 * 0.5 * (pos - neg), atol=1e-12)


@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: type(s).__name__)
def test_cfg_zero_star_is_cfg_on_the_velocity_with_the_optimal_scale(sch):
    """The x_hat form equals the velocity-space rule written out, and zero-init holds the state."""
    t = 0.5
    x, lab = _states(RING, sch, t)
    pos, neg = RING.x_hat(x, sch, t, lab), RING.x_hat(x, sch, t)
    vp, vn = RING.velocity(x, sch, t, lab), RING.velocity(x, sch, t)
    s = (vp * vn).sum(1, keepdim=True) / (vn * vn).sum(1, keepdim=True)
    v = s * vn + 3.0 * (vp - s * vn)
    out = G.CFGZeroStar(3.0)(pos, neg, x, t, sch, {})
    alpha, sigma = sch.alpha(torch.tensor(t, dtype=torch.float64)), sch.sigma(torch.tensor(t, dtype=torch.float64))
    d_a, d_s = sch.d_alpha(torch.tensor(t, dtype=torch.float64)), sch.d_sigma(torch.tensor(t, dtype=torch.float64))
    v_out = d_a * out + d_s * (x - alpha * out) / sigma
    assert torch.allclose(v_out, v, atol=1e-9, rtol=1e-9)
    held = G.CFGZeroStar(3.0, zero_sigma=1e-3)(pos, neg, x, t, sch, {})
    v_held = d_a * held + d_s * (x - alpha * held) / sigma
    assert v_held.abs().max() < 1e-9


# ------------------------------------------------------------------------------ guided denoisers
@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: type(s).__name__)
def test_classifier_guidance_with_the_exact_classifier_is_the_exact_conditional(sch):
    """w = 1 with the exact log p_t(c | x_t) on the unconditional field equals the exact conditional
    field, as does CFG at w = 1 (both are the conditional score)."""
    d = RING.denoiser(sch)
    for t in (0.1, 0.5, 0.9):
        x, lab = _states(RING, sch, t)
        exact = RING.x_hat(x, sch, t, lab)
        cg = G.ClassifierGuided(d, RING.classifier(sch), 1.0)(x, t, label=lab)
        assert (cg - exact).abs().max() < 1e-8 * max(1.0, float(sch.noise_to_signal(torch.tensor(t))) ** 2)
        assert (G.Guided(d, 1.0)(x, t, label=lab) - exact).abs().max() == 0
        assert (G.Guided(d, 0.0)(x, t, label=lab) - RING.x_hat(x, sch, t)).abs().max() < 1e-12
        # classifier guidance at w is CFG at w with exact fields (score_u + w (score_c - score_u))
        cg3 = G.ClassifierGuided(d, RING.classifier(sch), 3.0)(x, t, label=lab)
        assert (cg3 - G.Guided(d, 3.0)(x, t, label=lab)).abs().max() < 1e-7 * max(1.0, float(sch.noise_to_signal(torch.tensor(t))) ** 2)


def _tiny_net_denoiser(dtype=torch.float32):
    torch.manual_seed(0)
    net = MLP(dim=2, width=32, depth=2, num_classes=4).eval()
    return ModelDenoiser(net, RectifiedFlow(), "velocity", dtype=dtype)


def test_batched_forward_equals_two_forwards_and_forwards_are_counted():
    d = _tiny_net_denoiser()
    x = torch.randn(8, 2)
    lab = torch.arange(8) % 4
    for t in (0.7, torch.linspace(0.2, 0.9, 8)):
        batched, separate = G.Guided(d, 3.0), G.Guided(d, 3.0, batched=False)
        with torch.no_grad():
            a, b = batched(x, t, label=lab), separate(x, t, label=lab)
        assert torch.allclose(a, b, atol=1e-6)
        assert batched.forwards == separate.forwards == 16
    # the null label is the network's "no label" class
    with torch.no_grad():
        u = d(x, 0.7, label=torch.full((8,), 4))
        assert torch.allclose(G.Guided(d, 0.0)(x, 0.7, label=lab), u, atol=1e-6)
    unlabelled = ModelDenoiser(MLP(dim=2, width=8, depth=1), RectifiedFlow(), "velocity")
    with pytest.raises(ValueError, match="null="):
        G.Guided(unlabelled, 3.0)  # refused when built, before any sampling
    g = G.Guided(unlabelled, 3.0, null={"scale": 0.0})  # a user's null conditioning, merged over cond
    assert g.null({"scale": 1.0}) == {"scale": 0.0}


def test_sampling_nfe_and_forwards_with_an_interval():
    """NFE counts evaluations; forwards count network passes per sample: 2 inside the interval, 1 outside."""
    sch, n = VPLinear(), 32
    ts = grids.logsnr_grid(10, sch)
    interval = G.Interval(0.5, 5.0)
    inside = int(interval.contains(sch, ts[:-1]).sum())
    assert 0 < inside < 10
    g = G.Guided(RING.denoiser(sch), 3.0, interval=interval)
    x, lab = _states(RING, sch, float(ts[0]), n)
    r = sample(g, samplers.DDIM(), ts, x, cond={"label": lab})
    assert r.nfe == 10 and g.forwards == n * (10 + inside)


def test_intervals_in_sigma_and_logsnr_agree_and_bad_ones_are_refused():
    sch = VPCosine()
    t = torch.linspace(0.01, 0.99, 199, dtype=torch.float64)
    a = G.Interval(0.3, 4.0).contains(sch, t)
    b = G.Interval(-math.log(4.0), -math.log(0.3), "logsnr").contains(sch, t)  # logsnr = log(alpha / sigma)
    assert torch.equal(a, b) and 0 < int(a.sum()) < 199
    for bad in ("3", "4,1", "a,b"):
        with pytest.raises(ValueError, match="interval"):
            G.parse_interval(bad)
    with pytest.raises(ValueError, match="unknown guidance method"):
        G.guided(RING.denoiser(sch), "nope")
    with pytest.raises(ValueError, match="guide="):
        G.guided(RING.denoiser(sch), "auto")


def _interval_run(sch, grid, n_steps, x_init, lab, interval):
    ts = {"uniform": grids.uniform_grid(n_steps, t_min=1e-3), "karras": grids.karras_grid(n_steps, sch),
          "logsnr": grids.logsnr_grid(n_steps, sch)}[grid]
    g = G.Guided(RING.denoiser(sch), 4.0, interval=interval)
    x0, _ = RING.sample_t(x_init.shape[0], sch, float(ts[0]), torch.Generator().manual_seed(5))
    # start all grids from the same state at t = 1 (their first times are 1 for these schedules)
    return sample(g, samplers.Heun(), ts, x_init, cond={"label": lab}).x


def test_the_same_sigma_interval_gives_the_same_samples_on_every_grid():
    """The interval is a range of noise levels: uniform, Karras and logSNR grids agree to solver error,
    and all differ clearly from guidance at every level (the interval matters)."""
    sch = VPLinear()
    x, lab = _states(RING, sch, 1.0, 200, seed=2)
    interval = G.Interval(0.4, 3.0)
    outs = {g: _interval_run(sch, g, 400, x, lab, interval) for g in ("uniform", "karras", "logsnr")}
    spread = max(float((outs[a] - outs[b]).abs().max()) for a in outs for b in outs)
    everywhere = _interval_run(sch, "logsnr", 400, x, lab, None)
    assert spread < 0.03
    assert float((everywhere - outs["logsnr"]).abs().max()) > 20 * spread


# ------------------------------------------------------------------------------ sampling distributions
def _conditional_floor(mix, label, n, gen):
    a, b = mix.sample(n, gen, label), mix.sample(n, gen, label)
    return a, metrics.sliced_wasserstein(a, b)


@pytest.mark.parametrize("method", ["cfg", "rescale", "apg", "cfg-zero", "auto", "classifier"])
def test_scale_one_samples_the_exact_conditional(method):
    """At w = 1 every method samples p(x | c): within the two-sample floor of exact conditional samples."""
    sch, n = RectifiedFlow(), 1500
    d = RING.denoiser(sch)
    blurred = GaussianMixture(RING.weights, RING.means, RING.cov.dense() * 2.0, classes=RING.classes)
    extra = {"auto": {"guide": blurred.denoiser(sch)}, "classifier": {"classifier": RING.classifier(sch)}}.get(method, {})
    g = G.guided(d, method, 1.0, **extra)
    gen = torch.Generator().manual_seed(4)
    lab = torch.full((n,), 2)
    x, _ = RING.sample_t(n, sch, 1.0, gen, lab)
    ts = grids.logsnr_grid(40, sch)
    out = sample(g, samplers.DPMSolverPP(order=2), ts, x, cond={"label": lab}).x
    exact, floor = _conditional_floor(RING, 2, n, gen)
    assert metrics.sliced_wasserstein(out, exact) < 2.0 * floor + 0.01


def test_scale_zero_samples_the_unconditional():
    sch, n = VPLinear(), 1500
    gen = torch.Generator().manual_seed(6)
    x, _ = RING.sample_t(n, sch, 1.0, gen)
    lab = torch.full((n,), 1)
    out = sample(G.Guided(RING.denoiser(sch), 0.0), samplers.DPMSolverPP(order=2), grids.logsnr_grid(40, sch), x,
                 cond={"label": lab}).x
    a, b = RING.sample(n, gen), RING.sample(n, gen)
    assert metrics.sliced_wasserstein(out, a) < 2.0 * metrics.sliced_wasserstein(a, b) + 0.01


def _tilted_moments(mix, label, w, lo=-8.0, hi=8.0, m=400_001):
    """Mean and std of p(x | c)^w p(x)^(1 - w) (normalised) by quadrature in 1-D."""
    x = torch.linspace(lo, hi, m, dtype=torch.float64)[:, None]
    logq = w * mix.log_prob(x, label) + (1 - w) * mix.log_prob(x)
    q = torch.softmax(logq, 0)
    mean = float((q * x[:, 0]).sum())
    return mean, math.sqrt(float((q * (x[:, 0] - mean) ** 2).sum()))


def test_cfg_does_not_sample_the_tilted_target_and_predictor_corrector_closes_the_gap():
    """Two 1-D Gaussians (+-1.5, std 0.5), class +1, w = 2: the tilted target has mean 1.50 / std 0.50;
    the guided probability-flow ODE gives about 1.82 / 0.35; Langevin corrector steps on the guided
    (tilted) score bring the samples to the target as their number grows."""
    mix, sch, n = two_classes_1d(), VPLinear(), 4000
    mean_t, std_t = _tilted_moments(mix, 1, 2.0)
    assert abs(mean_t - 1.503) < 5e-3 and abs(std_t - 0.496) < 5e-3
    g = G.Guided(mix.denoiser(sch), 2.0)
    lab = torch.ones(n, dtype=torch.long)

    def run(sampler, steps, seed=0):
        gen = torch.Generator().manual_seed(seed)
        x, _ = mix.sample_t(n, sch, 1.0, gen)
        out = sample(g, sampler, grids.logsnr_grid(steps, sch), x, cond={"label": lab}, noise=GeneratorNoise(gen)).x
        return float(out.mean()), float(out.std())

    ode = run(samplers.DPMSolverPP(order=2), 60)
    assert abs(ode[0] - 1.82) < 0.03 and abs(ode[1] - 0.35) < 0.02      # CFG's answer, not the target's
    gaps = []
    for k in (0, 3, 20):
        pc = samplers.PredictorCorrector(predictor=samplers.DDIM(), snr=0.05, n_steps=k)
        m, s = run(pc, 60)
        gaps.append(abs(m - mean_t) + abs(s - std_t))
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.04 and gaps[0] > 0.4


@pytest.mark.slow
def test_predictor_corrector_guidance_reaches_the_tilted_target_in_2d():
    """The same on a 2-D two-class mixture of correlated Gaussians, with the tilted target's mean and
    covariance by quadrature: the ODE is off by about 0.32, 3 corrector steps by 0.2, 20 by 0.03."""
    covs = torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.25, -0.1], [-0.1, 0.3]]], dtype=torch.float64)
    mix = GaussianMixture([1.0, 1.0], [[-1.0, 0.0], [1.0, 0.5]], covs, classes=[0, 1])
    sch, n, w = VPLinear(), 3000, 2.0
    u = torch.linspace(-5, 5, 801, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    q = torch.softmax(w * mix.log_prob(grid, 1) + (1 - w) * mix.log_prob(grid), 0)[:, None]
    mean = (q * grid).sum(0)
    cov = (q * (grid - mean)).T @ (grid - mean)
    g = G.Guided(mix.denoiser(sch), w)
    lab = torch.ones(n, dtype=torch.long)

    def gap(sampler):
        gen = torch.Generator().manual_seed(1)
        x, _ = mix.sample_t(n, sch, 1.0, gen)
        out = sample(g, sampler, grids.logsnr_grid(50, sch), x, cond={"label": lab}, noise=GeneratorNoise(gen)).x
        d = out - out.mean(0)
        return float((out.mean(0) - mean).norm() + (d.T @ d / (n - 1) - cov).norm())

    ode = gap(samplers.DPMSolverPP(order=2))
    few, many = (gap(samplers.PredictorCorrector(samplers.DDIM(), snr=0.05, n_steps=k)) for k in (3, 20))
    assert ode > 0.2 and ode > few > many and many < 0.25 * ode


# ------------------------------------------------------------------------------ CFG++
@pytest.mark.parametrize("sch", [VPLinear(), RectifiedFlow()], ids=lambda s: type(s).__name__)
def test_cfgpp_ddim_step_is_a_cfg_step_of_scale_lambda_over_one_minus_exp_minus_h(sch):
    """One DDIM step of CFG++ at lambda equals a plain CFG DDIM step at lambda / (1 - exp(-h)), and
    lambda = 0 is the unconditional sampler exactly."""
    t, s = 0.7, 0.5
    x, lab = _states(RING, sch, t)
    ts = torch.tensor([t, s], dtype=torch.float64)
    d = RING.denoiser(sch)
    lam = 0.6
    ours = sample(G.Guided(d, lam), G.CFGPlusPlus(samplers.DDIM()), ts, x, cond={"label": lab}).x
    h = float(sch.logsnr(torch.tensor(s, dtype=torch.float64)) - sch.logsnr(torch.tensor(t, dtype=torch.float64)))
    cfg = sample(G.Guided(d, lam / (1 - math.exp(-h))), samplers.DDIM(), ts, x, cond={"label": lab}).x
    assert torch.allclose(ours, cfg, atol=1e-10)
    # lambda = 1: the conditional clean estimate with the unconditional noise (not the conditional sampler)
    one = sample(G.Guided(d, 1.0), G.CFGPlusPlus(samplers.DDIM()), ts, x, cond={"label": lab}).x
    a_s, s_s = float(sch.alpha(torch.tensor(s))), float(sch.sigma(torch.tensor(s)))
    a_t, s_t = float(sch.alpha(torch.tensor(t))), float(sch.sigma(torch.tensor(t)))
    expect = a_s * RING.x_hat(x, sch, t, lab) + s_s * (x - a_t * RING.x_hat(x, sch, t)) / s_t
    assert torch.allclose(one, expect, atol=1e-10)
    zero = sample(G.Guided(d, 0.0), G.CFGPlusPlus(samplers.DPMSolverPP(order=2)), grids.logsnr_grid(8, sch), x,
                  cond={"label": lab}).x
    plain = sample(d, samplers.DPMSolverPP(order=2), grids.logsnr_grid(8, sch), x, cond={"label": -1}).x
    assert torch.allclose(zero, plain, atol=1e-12)


def test_cfgpp_works_on_flow_models_with_every_compatible_sampler():
    """On rectified flow from pure noise (alpha = 0 at t = 1) CFG++ stays finite and moves samples
    toward their class, with every fixed-grid sampler it accepts; the rest are refused up front."""
    sch, n = RectifiedFlow(), 400
    x, _ = RING.sample_t(n, sch, 1.0, torch.Generator().manual_seed(0))
    lab = torch.arange(n) % 4
    ts = grids.uniform_grid(10)
    refused = 0
    for name, make in SAMPLERS.items():
        try:
            wrapped = G.CFGPlusPlus(make())
        except ValueError:
            refused += 1
            continue
        g = G.Guided(RING.denoiser(sch), 0.8)
        r = sample(g, wrapped, ts, x, cond={"label": lab}, noise=GeneratorNoise(torch.Generator().manual_seed(1)))
        assert torch.isfinite(r.x).all(), name
        own = RING.class_log_prob(r.x, sch, 0.0, lab).exp().mean()
        assert own > 0.9, name
        assert r.nfe == wrapped.prepare(sch, ts).nfe and g.forwards == 2 * n * r.nfe, name
    assert 0 < refused < len(SAMPLERS) // 2
    with pytest.raises(TypeError, match="Guided"):
        sample(RING.denoiser(sch), G.CFGPlusPlus(), ts, x)


# ------------------------------------------------------------------------------ the contract
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_runs_guided_and_stays_finite_in_bf16_at_scale_10(name):
    sch = VPLinear()
    ts = grids.logsnr_grid(8, sch)
    x, lab = _states(RING, sch, float(ts[0]), 64)
    for method in ("cfg", "apg", "cfg-zero"):
        g = G.guided(RING.denoiser(sch), method, 10.0, interval=(0.05, 50.0) if method == "cfg" else None)
        r = sample(g, SAMPLERS[name](), ts, x.to(torch.bfloat16), cond={"label": lab},
                   noise=GeneratorNoise(torch.Generator().manual_seed(0)))
        assert r.x.dtype == torch.bfloat16 and torch.isfinite(r.x).all()


def test_apg_momentum_starts_afresh_on_each_run():
    sch = VPLinear()
    ts = grids.logsnr_grid(8, sch)
    x, lab = _states(RING, sch, float(ts[0]))
    g = G.guided(RING.denoiser(sch), "apg", 5.0)
    a = sample(g, samplers.DPMSolverPP(order=2), ts, x, cond={"label": lab}).x
    b = sample(g, samplers.DPMSolverPP(order=2), ts, x, cond={"label": lab}).x
    assert torch.equal(a, b)


def test_the_guide_s_first_example_runs():
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "guidance.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    scope = {}
    exec(compile(code, "docs/guidance.md", "exec"), scope)
    assert scope["x"].shape == (16, 1, 8, 8) and torch.isfinite(scope["x"]).all()


def test_cfg_rescale_in_float64_and_on_one_value_per_sample():
    """CFG-rescale's standard deviations are taken in the state's dtype when it is wider than float32
    (a nearly flat float64 state: equal to the float64 formula to 1e-12, where float32 misses it by
    percents), and a state of one value per sample has no spread to match: plain CFG, never NaN."""
    g = torch.Generator().manual_seed(0)
    pos = 1.0 + 1e-7 * torch.randn(4, 64, dtype=torch.float64, generator=g)
    neg = 1.0 + 1e-7 * torch.randn(4, 64, dtype=torch.float64, generator=g)
    rule = G.CFGRescale(3.0, phi=0.7)
    cfg = neg + 3.0 * (pos - neg)
    want = 0.7 * cfg * pos.std(dim=1, keepdim=True) / cfg.std(dim=1, keepdim=True) + 0.3 * cfg
    assert torch.allclose(rule(pos, neg, pos, 0.5, VPLinear(), {}), want, rtol=1e-12, atol=0)
    flat = rule(pos[:, 0], neg[:, 0], pos[:, 0], 0.5, VPLinear(), {})
    assert torch.equal(flat, cfg[:, 0])


def test_a_guided_denoiser_is_plain_again_after_a_cfgpp_run():
    """CFG++ asks the guided denoiser for the unconditional pass in its run's state; after it, a plain
    run of the same denoiser at scale 1 costs one forward per evaluation, and so does an evaluation
    outside any run (the request ended with the run, even when it stopped early)."""
    sch = VPLinear()
    x, lab = _states(RING, sch, 0.9)
    g = G.Guided(RING.denoiser(sch), 1.0)
    sample(g, G.CFGPlusPlus(samplers.DDIM()), grids.logsnr_grid(4, sch), x, cond={"label": lab})
    assert g.forwards == 2 * 4 * x.shape[0]
    g.reset()
    sample(g, samplers.DDIM(), grids.logsnr_grid(4, sch), x, cond={"label": lab})
    assert g.forwards == 4 * x.shape[0]

    def stop(info):
        if info.i == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        sample(g, G.CFGPlusPlus(samplers.DDIM()), grids.logsnr_grid(4, sch), x, cond={"label": lab}, callback=stop)
    g.reset()
    g(x, 0.5, label=lab)
    assert g.forwards == x.shape[0] and g.run_state().keep_negative is False

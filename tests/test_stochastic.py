"""Stochastic samplers against exact answers: weak orders from the exact output law on Gaussian
data, distributions against the exact mixture, coincidences, Brownian-tree noise, the Langevin
corrector, Restart's jumps and the adaptive SDE solver."""

import math

import numpy as np
import pytest
import torch

from sdeflow import BrownianTreeNoise, GeneratorNoise, SeededNoise, analytic, grids, metrics, sample
from sdeflow.registry import SAMPLERS
from sdeflow.samplers import (DDIM, DDPM, DPMSolver, DPMSolverPP, EDMHeun, EDMStochastic, Euler, EulerAncestral,
                              EulerMaruyama, GottaGoFast, Heun, PredictorCorrector, Restart, SDEDPMSolverPP,
                              SDEDPMSolverPPSingle, UniPC)
from sdeflow.schedules import EDM, RectifiedFlow, VPLinear

STOCHASTIC = sorted(n for n, make in SAMPLERS.items() if make().stochastic)
GAUSS = analytic.random_mixture(8, 1, seed=4)
# the asymptotic regime of EDM's churn needs n > churn / (sqrt(2) - 1); exact models need s_noise = 1
WEAK = {n: SAMPLERS[n]() for n in STOCHASTIC if SAMPLERS[n]().convergence_order >= 1 and not SAMPLERS[n]().couples_batch}
WEAK["edm-churn"] = EDMStochastic(churn=10, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0)
WEAK["edm-churn-euler"] = EDMStochastic(churn=10, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0, heun=False)


def grid(sch, n):
    return grids.karras_grid(n, sch) if isinstance(sch, EDM) else grids.logsnr_grid(n, sch, t_max=0.999)


@pytest.mark.parametrize("name", sorted(WEAK))
@pytest.mark.parametrize("sch", [VPLinear(), RectifiedFlow(), EDM()], ids=["vp", "rf", "edm"])
def test_weak_order_on_a_gaussian(name, sch):
    """The exact law of the output (no Monte Carlo noise) approaches the data at the declared rate
    (3M-SDE's third-order drift shows above its weak order 2 in this range, so a faster rate up to
    the drift's order is allowed)."""
    sampler = WEAK[name]
    ns = [32, 64, 128]
    errs = []
    for n in ns:
        m, v = analytic.gaussian_output_law(GAUSS, sampler, sch, grid(sch, n))
        errs.append(analytic.gaussian_w2(m, v, GAUSS.means[0], GAUSS.cov.var[0]))
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert sampler.convergence_order - 0.35 < slope < max(sampler.convergence_order, sampler.order) + 0.35, (errs, slope)


def test_exact_output_law_matches_monte_carlo():
    """The probe-based law agrees with the moments of many sampled outputs."""
    sch, ts = VPLinear(), grids.logsnr_grid(10, VPLinear())
    sampler = SDEDPMSolverPP(order=2)
    m, v = analytic.gaussian_output_law(GAUSS, sampler, sch, ts)
    n = 20000
    x, _ = GAUSS.sample_t(n, sch, 1.0, torch.Generator().manual_seed(0))
    out = sample(GAUSS.denoiser(sch), sampler, ts, x, noise=SeededNoise(list(range(n)))).x
    assert ((out.mean(0) - m).abs() <= 5 * (v / n).sqrt()).all()
    assert ((out.var(0) - v).abs() <= 5 * v * math.sqrt(2 / n)).all()


def run(sampler, sch, ts, x, seeds=(1, 2, 3, 4, 5, 6)):
    return sample(GAUSS.denoiser(sch), sampler, ts, x, noise=SeededNoise(list(seeds))).x


@pytest.mark.parametrize("sch", [VPLinear(), RectifiedFlow()], ids=["vp", "rf"])
def test_coincidences(sch):
    ts = grids.logsnr_grid(9, sch, t_max=0.999)
    x, _ = GAUSS.sample_t(6, sch, float(ts[0]), torch.Generator().manual_seed(1))
    ancestral = run(DDPM(), sch, ts, x)
    for other in [DDIM(eta=1.0), EulerAncestral(), SDEDPMSolverPP(order=1)]:
        assert torch.allclose(run(other, sch, ts, x), ancestral, atol=1e-10)
    for order, variant in [(2, "midpoint"), (2, "heun"), (3, "heun")]:
        assert torch.allclose(run(SDEDPMSolverPP(order=order, variant=variant, eta=0.0), sch, ts, x),
                              run(DPMSolverPP(order=order, variant=variant), sch, ts, x), atol=1e-10)
    assert torch.allclose(run(SDEDPMSolverPPSingle(eta=0.0), sch, ts, x),
                          run(DPMSolver(order=2, form="data", variant="taylor"), sch, ts, x), atol=1e-10)
    assert torch.allclose(run(EDMStochastic(churn=0.0), sch, ts, x), run(EDMHeun(), sch, ts, x), atol=1e-10)
    assert torch.allclose(run(EDMStochastic(churn=0.0, heun=False), sch, ts, x), run(DDIM(), sch, ts, x), atol=1e-10)
    assert torch.allclose(run(PredictorCorrector(predictor=UniPC(), n_steps=0), sch, ts, x), run(UniPC(), sch, ts, x))
    assert torch.allclose(run(Restart(intervals=()), sch, ts, x), run(Heun(), sch, ts, x))
    inner = ts[:-1]  # Euler-Maruyama takes the exact denoising step to sigma = 0; compare before it
    assert torch.allclose(run(EulerMaruyama(eta=0.0), sch, inner, x), run(Euler(), sch, inner, x), atol=1e-10)


# ---------------------------------------------------------------- distributions against the mixture
MIX = analytic.random_mixture(3, 4, seed=7)


def moments_ok(out, exact, n_se=5.0):
    """Mean and covariance within ``n_se`` standard errors, estimated from exact samples."""
    n = out.shape[0]
    mu, cov = MIX.mean(), MIX.covariance()
    c = exact - mu
    se_mean = (torch.diagonal(cov) / n).sqrt()
    prod = c[:, :, None] * c[:, None, :]
    se_cov = (prod.var(0) / n).sqrt()
    d = out - out.mean(0)
    cov_out = d.T @ d / (n - 1)
    return bool(((out.mean(0) - mu).abs() <= n_se * se_mean).all()) and bool(((cov_out - cov).abs() <= n_se * se_cov + 1e-3).all())


DIST = {name: SAMPLERS[name]() for name in STOCHASTIC}
DIST["pc-langevin"] = PredictorCorrector(snr=0.05)  # the image-sized default snr = 0.16 is too strong in 3-D
DIST["edm-churn"] = EDMStochastic(s_noise=1.0)
DIST["edm-churn-euler"] = EDMStochastic(s_noise=1.0, heun=False)


@pytest.mark.parametrize("name", sorted(DIST))
def test_distribution_matches_the_mixture(name):
    """At a high step count the samples have the mixture's mean and covariance (within tolerances
    from the sample size) and a sliced Wasserstein distance near the two-sample floor."""
    sch, n = VPLinear(), 3000
    sampler = DIST[name]
    steps = 20 if sampler.adaptive else 150
    ts = grids.logsnr_grid(steps, sch)
    gen = torch.Generator().manual_seed(3)
    x, _ = MIX.sample_t(n, sch, 1.0, gen)
    exact, exact2 = MIX.sample(n, gen), MIX.sample(n, gen)
    out = sample(MIX.denoiser(sch), sampler, ts, x, noise=GeneratorNoise(gen)).x
    assert moments_ok(out, exact)
    floor = metrics.sliced_wasserstein(exact2, exact)
    assert metrics.sliced_wasserstein(out, exact) < 2.0 * floor + 0.01


# ---------------------------------------------------------------------------------- seeded noise
def test_integer_hash_matches_its_definition():
    """The tensor hash is the splitmix64 finaliser computed modulo 2^64: checked against Python's
    exact integers (this certifies that int64 products wrap on this machine)."""
    from sdeflow.noise import _mix64, _signed

    words = [int(w) for w in torch.randint(-2 ** 62, 2 ** 62, (500,), generator=torch.Generator().manual_seed(3))]
    words += [0, 1, -1, 2 ** 63 - 1, -2 ** 63]

    def reference(z):
        m = (1 << 64) - 1
        z &= m
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)

    got = _mix64(torch.tensor(words, dtype=torch.int64)).tolist()
    assert got == [_signed(reference(w)) for w in words]


def test_seeded_noise_is_standard_normal_and_independent():
    """Moments, quantiles against the normal CDF (Kolmogorov-Smirnov), and no correlation between
    samples, steps, draws or neighbouring elements."""
    n = 4000
    like = torch.empty(n, 3, 5, dtype=torch.float64)  # an odd number of elements per sample
    src = SeededNoise(list(range(n)))
    z = src(like, 0)
    flat = z.reshape(-1)
    m = flat.numel()
    assert abs(float(flat.mean())) < 5 / math.sqrt(m) and abs(float(flat.var()) - 1) < 5 * math.sqrt(2 / m)
    srt = flat.sort().values
    cdf = 0.5 * (1 + torch.erf(srt / math.sqrt(2)))
    ks = float((cdf - torch.arange(1, m + 1, dtype=torch.float64) / m).abs().max())
    assert ks < 1.63 / math.sqrt(m)  # the 1% critical value
    assert float(srt[0]) < -3.5 and float(srt[-1]) > 3.5  # the tails are there
    bound = 5 / math.sqrt(n * 15)
    pairs = [(z, src(like, 1)), (z, src(like, 0, draw=1)), (z, z.roll(1, 0)),
             (z.reshape(n, -1)[:, :-1], z.reshape(n, -1)[:, 1:]),          # neighbours within a sample
             (z.reshape(n, -1)[:, :7], z.reshape(n, -1)[:, 8:15])]          # the two halves of the hashed words
    for a, b in pairs:
        assert abs(float((a * b).mean())) < bound
    assert torch.equal(src(like, 0), z)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_seeded_noise_does_not_depend_on_the_batch(dtype):
    like = torch.empty(9, 3, 7, dtype=dtype)
    full = SeededNoise(list(range(100, 109)))(like, 4, draw=2)
    assert full.dtype == dtype
    for lo, hi in [(0, 1), (3, 8), (8, 9)]:
        assert torch.equal(SeededNoise(list(range(100 + lo, 100 + hi)))(like[lo:hi], 4, draw=2), full[lo:hi])
    # different seeds, steps and draws give different noise; the seed reaches every bit of the key
    assert not torch.equal(SeededNoise([2 ** 40 + 100] + list(range(101, 109)))(like, 4, draw=2)[0], full[0])
    assert not torch.equal(SeededNoise(list(range(100, 109)))(like, 5, draw=2), full)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_seeded_noise_on_the_gpu_matches_the_cpu():
    like = torch.empty(16, 4, 8)
    src = SeededNoise(list(range(16)))
    on_gpu = src(like.cuda(), 3)
    assert on_gpu.device.type == "cuda"
    assert torch.allclose(on_gpu.cpu(), src(like, 3), atol=1e-6)


# ---------------------------------------------------------------------------------- Brownian tree
def test_brownian_tree_increments():
    """Unit variance, independent over disjoint intervals, additive, reproducible, per sample."""
    n = 1500
    like = torch.empty(n, 2, dtype=torch.float64)
    tree = BrownianTreeNoise(list(range(n)))
    a, b = tree(like, 0, span=(0.9, 0.4)), tree(like, 0, span=(0.4, 0.1))
    whole = tree(like, 0, span=(0.9, 0.1))
    assert abs(float(a.var()) - 1) < 0.1 and abs(float(b.var()) - 1) < 0.1
    assert abs(float((a * b).mean())) < 0.1
    assert torch.allclose((a * 0.5 ** 0.5 + b * 0.3 ** 0.5) / 0.8 ** 0.5, whole, atol=1e-12)
    assert torch.equal(BrownianTreeNoise(list(range(n)))(like, 5, span=(0.9, 0.4)), a)  # the step index is irrelevant
    part = BrownianTreeNoise([7, 8])(like[:2], 0, span=(0.9, 0.4))
    assert torch.equal(part, a[7:9])
    assert not torch.equal(tree(like, 0, draw=1), tree(like, 0, draw=2))  # no span: independent draws


@pytest.mark.parametrize("sampler", [SDEDPMSolverPP(order=1), SDEDPMSolverPP(order=2), EulerMaruyama()],
                         ids=["sde-1", "sde-2m", "em"])
def test_brownian_tree_refines_the_same_path(sampler):
    """With a Brownian tree, 2n steps land close to n steps (the same path, refined); with
    independent noise they do not."""
    sch, n_samp = VPLinear(), 64
    x, _ = GAUSS.sample_t(n_samp, sch, 1.0, torch.Generator().manual_seed(2))
    den = GAUSS.denoiser(sch)

    def out(n, noise):
        return sample(den, sampler, grids.logsnr_grid(n, sch), x, noise=noise).x

    seeds = list(range(n_samp))
    tree = [out(n, BrownianTreeNoise(seeds)) for n in (20, 40, 80)]
    gap_tree = [float((tree[k + 1] - tree[k]).pow(2).mean().sqrt()) for k in range(2)]
    gap_seeded = float((out(40, SeededNoise(seeds)) - out(20, SeededNoise(seeds))).pow(2).mean().sqrt())
    assert gap_tree[0] < 0.3 * gap_seeded and gap_tree[1] < gap_tree[0]


# ------------------------------------------------------------------------ corrector, restart, adaptive
def test_langevin_corrector_reaches_the_marginal_at_fixed_time():
    """Many corrector steps at one time s turn a wrong start into samples of p_s."""
    sch, s, n = VPLinear(), 0.3, 4000
    g = analytic.gaussian(torch.zeros(2), torch.tensor([0.6, 1.0]))
    x = 3.0 * torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pc = PredictorCorrector(predictor=DDIM(), snr=0.15, n_steps=300)
    out = sample(g.denoiser(sch), pc, torch.tensor([s + 1e-9, s], dtype=torch.float64), x,
                 noise=GeneratorNoise(torch.Generator().manual_seed(1))).x
    a, sg = float(sch.alpha(s)), float(sch.sigma(s))
    var = a * a * torch.tensor([0.6, 1.0], dtype=torch.float64) + sg * sg
    assert (out.mean(0).abs() < 5 * (var / n).sqrt()).all()
    # + Langevin's O(step) bias: the stationary variance of a step e is v / (1 - e / 2v), here e ~ 0.045 v
    assert ((out.var(0) - var).abs() < 5 * var * math.sqrt(2 / n) + 0.03 * var).all()


def test_restart_jump_is_the_forward_transition_and_nfe_adds_up():
    from sdeflow.samplers.restart import Jump

    sch = VPLinear()
    ts = grids.karras_grid(10, sch)
    r = Restart(solver=Heun(), intervals=((0.1, 2.0, 3, 2),))
    plan = r.prepare(sch, ts)
    jumps = [op for op in plan.coef if isinstance(op, Jump)]
    assert len(jumps) == 2
    j = [k for k, op in enumerate(plan.coef) if isinstance(op, Jump)][0]
    t_lo, t_hi = plan.t[j], plan.s[j]
    c_x, c_z = jumps[0].c_x, jumps[0].c_z
    a_lo, s_lo, a_hi, s_hi = (float(sch.alpha(t_lo)), float(sch.sigma(t_lo)), float(sch.alpha(t_hi)), float(sch.sigma(t_hi)))
    assert c_x == pytest.approx(a_hi / a_lo) and (c_x * s_lo) ** 2 + c_z ** 2 == pytest.approx(s_hi ** 2)
    assert float(sch.noise_to_signal(t_hi)) == pytest.approx(2.0, rel=1e-6)
    assert plan.nfe == Heun().prepare(sch, ts).nfe + 2 * (2 * 3)


def test_gotta_go_fast_tolerance_controls_cost_and_accuracy():
    sch, n = VPLinear(), 2000
    gen = torch.Generator().manual_seed(5)
    x, _ = MIX.sample_t(n, sch, 1.0, gen)
    exact = MIX.sample(n, gen)
    loose = sample(MIX.denoiser(sch), GottaGoFast(rtol=0.1, atol=0.02), [1.0, 0.0], x, noise=GeneratorNoise(gen))
    tight = sample(MIX.denoiser(sch), GottaGoFast(rtol=0.02, atol=0.005), [1.0, 0.0], x, noise=GeneratorNoise(gen))
    assert tight.nfe > 2 * loose.nfe
    assert moments_ok(tight.x, exact)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="eta"):
        EulerMaruyama(eta=-1.0)
    with pytest.raises(ValueError, match="variance"):
        DDPM(variance="learned")
    with pytest.raises(ValueError, match="single-step"):
        Restart(solver=DPMSolverPP())
    with pytest.raises(ValueError, match="interval"):
        Restart(intervals=((2.0, 0.1, 3, 1),))
    with pytest.raises(ValueError, match="snr"):
        PredictorCorrector(snr=0.0)
    with pytest.raises(ValueError, match="corrector"):
        SDEDPMSolverPP(corrector=True)
    with pytest.raises(ValueError, match="s_tmax"):
        EDMStochastic(s_tmin=2.0, s_tmax=1.0)
    with pytest.raises(ValueError, match="couples"):
        analytic.gaussian_output_law(GAUSS, PredictorCorrector(), VPLinear(), grids.logsnr_grid(4, VPLinear()))

"""Inversion: the explicit inverse converges at the sampler's order to the exact flow map, the exact
methods invert the discrete sampling map to their tolerance, and inversion under one class then
sampling under another moves samples to the other class."""

import pytest
import torch

from sdeflow import analytic, grids, sample
from sdeflow.inversion import invert
from sdeflow.registry import SAMPLERS
from sdeflow.schedules import RectifiedFlow, VPLinear

from cases import cross
from test_convergence import STEPS, SUPERCONVERGENT_ON_GAUSSIANS, THIRD_ORDER_CASES, fitted_order

DETERMINISTIC = sorted(n for n, make in SAMPLERS.items() if not make().stochastic and not make().adaptive)
GAUSS = analytic.random_mixture(4, 1, structure="full", seed=3)
RING = analytic.ring_2d()
CASES = {
    "vp-linear": (VPLinear(), 1.0),
    "rectified-flow": (RectifiedFlow(), 0.99),
}
DEFAULT_CASE = "vp-linear"  # every sampler here; every case with one sampler of each kind (tests/cases.py)
#: Explicit multistep methods of order >= 3 in rho (LMS, DEIS-rhoAB) are unstable integrating
#: towards noise at coarse grids, and the noise-form DPM-Solver-2M is pre-asymptotic there; they
#: reach their order from finer grids (LMS from above: its errors fall slightly faster than h^4).
#: EDICT's coupled sequences, run towards noise on a flow, settle to first order from about 256 steps.
FINER = {"lms": [96, 192, 384, 768], "deis-rho-3": [96, 192, 384, 768], "dpm-solver-2m": [32, 64, 128, 256],
         "edict": [256, 512, 1024]}


def _grid(n, sch, t_max):
    return grids.karras_grid(n, sch, t_max=t_max, denoise_to_zero=False)


@pytest.mark.parametrize("name,case", cross(DETERMINISTIC, sorted(CASES), DEFAULT_CASE))
def test_explicit_inversion_converges_at_the_samplers_order(name, case):
    """The sampler's steps on the reversed grid integrate the probability-flow ODE towards noise:
    the noise they reach converges to the exact flow map of the data at the sampler's order."""
    sampler = SAMPLERS[name]()
    sch, t_max = CASES[case]
    steps = FINER.get(name) or SUPERCONVERGENT_ON_GAUSSIANS.get(name) or STEPS[sampler.convergence_order]
    t_min = float(_grid(steps[0], sch, t_max)[-1])
    x, _ = GAUSS.sample_t(64, sch, t_min, torch.Generator().manual_seed(0))
    exact = GAUSS.flow_map(x, sch, t_min, t_max)
    errs = [(invert(GAUSS.denoiser(sch), sampler, _grid(n, sch, t_max), x, check_round_trip=False).noise - exact)
            .pow(2).sum(1).mean().sqrt().item() for n in steps]
    order = fitted_order(steps, errs)
    if name in SUPERCONVERGENT_ON_GAUSSIANS:
        assert order >= sampler.convergence_order + 0.7, (order, errs)
    elif name == "lms":
        assert sampler.convergence_order - 0.3 <= order <= sampler.convergence_order + 0.5, (order, errs)
    else:
        declared = 3 if (name, case) in THIRD_ORDER_CASES else sampler.convergence_order
        assert abs(order - declared) <= 0.3, (order, errs)


def test_ddim_inversion_round_trip_is_first_order():
    """DDIM inversion's round trip (invert, then sample back) is first order: it at least halves as
    the steps double (slightly faster on the ring at these steps, still pre-asymptotic)."""
    sch = VPLinear()
    trips = []
    for n in [20, 40, 80, 160]:
        ts = _grid(n, sch, 1.0)
        x, _ = RING.sample_t(256, sch, float(ts[-1]), torch.Generator().manual_seed(0))
        out = invert(RING.denoiser(sch), SAMPLERS["ddim"](), ts, x)
        assert out.nfe == n and out.round_trip_nfe == n
        trips.append(out.round_trip_rms)
    assert 0.8 <= fitted_order([20, 40, 80, 160], trips) <= 1.5, trips
    assert all(a / b >= 2 for a, b in zip(trips, trips[1:])), trips


@pytest.mark.parametrize("name,case", cross([n for n in DETERMINISTIC if not SAMPLERS[n]().reversible], sorted(CASES),
                                             DEFAULT_CASE))
def test_exact_inversion_reaches_its_tolerance(name, case):
    """Sampling the noise found by the exact method lands on the data to the tolerance, for every
    deterministic sampler (2-D ring mixture, exact field, 20 steps, float64); reversible samplers
    are inverted by undoing their steps (tests/test_reversible.py)."""
    sch, t_max = CASES[case]
    ts = _grid(20, sch, t_max)
    x, _ = RING.sample_t(64, sch, float(ts[-1]), torch.Generator().manual_seed(1))
    sampler = SAMPLERS[name]()
    out = invert(RING.denoiser(sch), sampler, ts, x, method="exact", tol=1e-9)
    assert out.method == ("newton" if sampler.has_history else "fixed-point")
    assert out.converged, (out.round_trip.max(), out.iterations)
    again = sample(RING.denoiser(sch), sampler, ts, out.noise).x
    rms = (again - x).pow(2).mean(1).sqrt()
    assert bool((rms <= 1e-9 * x.pow(2).mean(1).sqrt().clamp(min=1)).all())
    assert torch.allclose(rms, out.round_trip, rtol=0, atol=1e-14)
    explicit = invert(RING.denoiser(sch), sampler, ts, x)
    assert out.nfe > explicit.nfe


def test_fixed_point_and_newton_agree_where_both_apply():
    sch = VPLinear()
    ts = _grid(15, sch, 1.0)
    x, _ = RING.sample_t(32, sch, float(ts[-1]), torch.Generator().manual_seed(2))
    a = invert(RING.denoiser(sch), SAMPLERS["heun"](), ts, x, method="fixed-point")
    b = invert(RING.denoiser(sch), SAMPLERS["heun"](), ts, x, method="newton")
    assert a.converged and b.converged
    assert torch.allclose(a.noise, b.noise, rtol=1e-7, atol=1e-7)


def test_exact_inversion_in_float32_reaches_the_default_tolerance():
    sch = RectifiedFlow()
    ts = _grid(20, sch, 0.99)
    x, _ = RING.sample_t(64, sch, float(ts[-1]), torch.Generator().manual_seed(3))
    for name in ["ddim", "dpm-solver++-2m"]:
        out = invert(RING.denoiser(sch), SAMPLERS[name](), ts, x.float(), method="exact")
        assert out.noise.dtype == torch.float32 and out.converged, (name, out.round_trip.max())


def test_editing_by_inversion_moves_samples_to_the_target_class():
    """Invert samples of class 0 under class 0, sample the noise back under class 1: the exact class
    posterior of the results is class 1, while sampling under class 0 returns the input."""
    mix = analytic.ring_2d(n_classes=2)
    sch = VPLinear()
    ts = _grid(30, sch, 1.0)
    t_min = float(ts[-1])
    x, _ = mix.sample_t(256, sch, t_min, torch.Generator().manual_seed(4), label=0)
    den = mix.denoiser(sch)
    source, target = torch.zeros(256, dtype=torch.long), torch.ones(256, dtype=torch.long)
    inv = invert(den, SAMPLERS["dpm-solver++-2m"](), ts, x, cond={"label": source}, method="exact")
    assert inv.converged
    same = sample(den, SAMPLERS["dpm-solver++-2m"](), ts, inv.noise, cond={"label": source}).x
    assert torch.allclose(same, x, atol=1e-8)
    edited = sample(den, SAMPLERS["dpm-solver++-2m"](), ts, inv.noise, cond={"label": target}).x
    p_target = mix.class_log_prob(edited, sch, t_min, target).exp()
    p_source = mix.class_log_prob(x, sch, t_min, target).exp()
    assert float(p_target.mean()) > 0.97 and float((p_target > 0.5).double().mean()) >= 0.99, p_target
    assert float(p_source.mean()) < 0.01


def test_bad_input_is_refused_before_any_work():
    sch = VPLinear()
    den = RING.denoiser(sch)
    x = torch.zeros(4, 2, dtype=torch.float64)
    ts = _grid(10, sch, 1.0)
    with pytest.raises(ValueError, match="deterministic"):
        invert(den, SAMPLERS["ddpm"](), ts, x)
    with pytest.raises(ValueError, match="above t = 0"):
        invert(den, SAMPLERS["ddim"](), grids.karras_grid(10, sch), x)
    with pytest.raises(ValueError, match="method must be one of"):
        invert(den, SAMPLERS["ddim"](), ts, x, method="backward")
    with pytest.raises(ValueError, match="newton"):
        invert(den, SAMPLERS["dpm-solver++-2m"](), ts, x, method="fixed-point")
    with pytest.raises(ValueError, match="tol"):
        invert(den, SAMPLERS["ddim"](), ts, x, method="exact", tol=0)
    with pytest.raises(ValueError, match="decreasing"):
        invert(den, SAMPLERS["ddim"](), ts.flip(0), x)
    with pytest.raises(TypeError, match="x must be"):
        invert(den, SAMPLERS["ddim"](), ts, [[0.0, 1.0]])


# ------------------------------------------------------------------------------ under guidance
RING4 = analytic.ring_2d(n_classes=4)


@pytest.mark.parametrize("name", ["ddim", "dpm-solver++-2m", "bdia", "cfg++ ddim"])
def test_exact_inversion_of_guided_sampling(name):
    """Samples drawn with classifier-free guidance (scale 2, or CFG++ with lambda 0.5) on the 4-class
    ring are inverted exactly under the same guidance: round trip to 1e-9. Where the inverse gives
    the noise rather than a pair (Newton on the 2M map, CFG++'s DDIM), it is the noise that drew them;
    the CFG-guided DDIM map folds, so its step-by-step solve may land on another preimage."""
    from sdeflow import guidance as G

    sch = VPLinear()
    ts = _grid(20, sch, 1.0)
    z = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lab = torch.arange(32) % 4
    if name == "cfg++ ddim":
        guided, sampler = G.Guided(RING4.denoiser(sch), 0.5), G.CFGPlusPlus()
    else:
        guided, sampler = G.Guided(RING4.denoiser(sch), 2.0), SAMPLERS[name]()
    x = sample(guided, sampler, ts, z, cond={"label": lab}).x
    out = invert(guided, sampler, ts, x, cond={"label": lab}, method="exact")
    assert out.converged and float(out.round_trip.max()) <= 1e-9, out.round_trip.max()
    if name in ("dpm-solver++-2m", "cfg++ ddim"):
        assert torch.allclose(out.noise, z, atol=1e-6)


@pytest.mark.parametrize("sch", [VPLinear(), RectifiedFlow()], ids=["vp", "rf"])
def test_cfgpp_keeps_ddim_inversion_invertible_as_guidance_grows(sch):
    """DDIM inversion under CFG re-noises with the guided noise estimate, and its round trip grows
    with the scale; under CFG++ (re-noising with the unconditional estimate) it stays where it is
    without guidance: at every lambda below half CFG's at scale 2 (4-class ring, 20 steps)."""
    from sdeflow import guidance as G

    ts = _grid(20, sch, 0.99 if isinstance(sch, RectifiedFlow) else 1.0)
    x = torch.cat([RING4.sample_t(32, sch, float(ts[-1]), torch.Generator().manual_seed(c), label=c)[0] for c in range(4)])
    lab = torch.arange(4).repeat_interleave(32)

    def trip(scale, sampler):
        return invert(G.Guided(RING4.denoiser(sch), scale), sampler, ts, x, cond={"label": lab}).round_trip_rms

    cfg = [trip(w, SAMPLERS["ddim"]()) for w in (1.0, 2.0, 4.0)]
    assert cfg[0] < cfg[1] < cfg[2], cfg
    plus = [trip(lam, G.CFGPlusPlus()) for lam in (0.2, 0.5, 0.8)]
    assert max(plus) <= 0.5 * cfg[1] and max(plus) <= 2 * min(plus), (plus, cfg)

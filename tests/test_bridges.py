"""Processes pinned at a source, checked against exact answers: the ends of every process, the bridges'
closed forms against Gaussian conditioning, the residual as a Markov (alpha, sigma) path, parameterization
round trips, the loss at and around the exact field, the boot step's law, convergence orders on the
residual, the law of the output against the exact posterior, and the published samplers (written from
their papers in ``benchmarks/bridge_peers.py``) equal to sdeflow's updates on the residual in float64."""

import math
import pathlib
import sys

import pytest
import torch

from sdeflow import analytic, metrics
from sdeflow.bridges import (BRIDGE_PARAMETERIZATIONS, BRIDGE_SAMPLERS, PROCESSES, RDDM, Boot, BridgeDenoiser, BridgeLoss,
                             DDBMHeun, LinearBridge, MeanReverting, PairedMixture, bridge_grid, bridge_sampler,
                             sample_bridge)
from sdeflow.schedules import VPLinear
from sdeflow.grids import logsnr_grid
from sdeflow.samplers import DDIM, DPMSolver, DPMSolverPP, Heun
from sdeflow.sampling import sample

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import bridge_peers as peers  # noqa: E402

NAMES = list(PROCESSES)
VARIANTS = {"ir-sde-constant": lambda: MeanReverting(theta="constant"), "ir-sde-linear": lambda: MeanReverting(theta="linear"),
            "rddm-rising": lambda: RDDM(alphas="increasing", betas="increasing"),
            "rddm-falling": lambda: RDDM(alphas="decreasing", betas="decreasing"), "ou-bridge-scaled": lambda: LinearBridge(
                VPLinear(beta_min=2.0, beta_max=2.0), scale=0.5)}
EVERY = {**{n: PROCESSES[n] for n in NAMES}, **VARIANTS}
A2 = torch.tensor([[1.0, 0.3], [0.0, 0.5]], dtype=torch.float64)


def ring_pairs(noise=0.3):
    return PairedMixture(analytic.ring_2d(), A2, noise)


def one_source(pairs, n, seed=1):
    _, x1 = pairs.sample(1, torch.Generator().manual_seed(seed))
    return x1.expand(n, pairs.dim).clone()


# ---- processes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(EVERY))
def test_process_ends_are_exact_and_finite(name):
    p = EVERY[name]()
    assert [float(v) for v in p.abc(0.0)] == [1.0, 0.0, 0.0]
    if p.pinned:
        assert [float(v) for v in p.abc(1.0)] == [0.0, 1.0, 0.0]
        assert float(p.residual_logsnr(1.0)) == -math.inf
    assert float(p.residual_logsnr(0.0)) == math.inf
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    for v in p.abc(t):
        assert bool(torch.isfinite(v).all())
    inner = t[1:-1]
    for v in p.d_abc(inner):
        assert bool(torch.isfinite(v).all())
    lam = p.residual_logsnr(inner)
    a, _, c = p.abc(inner)
    torch.testing.assert_close(lam, torch.log(a / c), rtol=1e-12, atol=1e-12)
    assert bool((lam[1:] < lam[:-1]).all())  # the residual's noise grows with t


@pytest.mark.parametrize("name", list(EVERY))
def test_process_derivatives(name):
    p = EVERY[name]()
    t = torch.linspace(0.02, 0.98, 25, dtype=torch.float64)
    t = t[(t - 0.5).abs() > 1e-3]  # I2SB's beta has a kink at t = 1/2
    h = 1e-6
    for up, lo, d in zip(p.abc(t + h), p.abc(t - h), p.d_abc(t)):
        torch.testing.assert_close((up - lo) / (2 * h), d, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in NAMES if PROCESSES[n]().pinned])
def test_linear_bridge_is_gaussian_conditioning(name):
    """``(a, b, c)`` of a linear bridge against conditioning the joint Gaussian of ``(x_t, x_1)`` given ``x0``."""
    p = PROCESSES[name]()
    base = p.base
    for t in (0.1, 0.37, 0.5, 0.8, 0.99):
        al, sg = float(base.alpha(t)), p.scale * float(base.sigma(t))
        al1, sg1 = float(base.alpha(1.0)), p.scale * float(base.sigma(1.0))
        # the unpinned process: x_t = al x0 + sg e1, x_1 = (al1 / al) x_t + sqrt(sg1^2 - (al1 sg / al)^2) e2
        cov_t1 = (al1 / al) * sg * sg
        gain = cov_t1 / (sg1 * sg1)
        a, b, c = (float(v) for v in p.abc(t))
        assert a == pytest.approx(al - gain * al1, rel=1e-10, abs=1e-12)
        assert b == pytest.approx(gain, rel=1e-10)
        assert c * c == pytest.approx(sg * sg - gain * cov_t1, rel=1e-9, abs=1e-14)
    if name == "brownian":
        for t in (0.2, 0.7):
            assert [float(v) for v in p.abc(t)] == pytest.approx([1 - t, t, math.sqrt(t * (1 - t))], rel=1e-12)


@pytest.mark.parametrize("name", list(EVERY))
def test_residual_transitions_exist(name):
    """The residual is a Markov (a, c) path: every transition ``y_t | y_s`` has variance
    ``c_t^2 - (a_t / a_s)^2 c_s^2 >= 0`` (the posterior steps of DDPM and I2SB need it)."""
    p = EVERY[name]()
    t = torch.linspace(0.001, 0.999, 300, dtype=torch.float64)
    a, _, c = p.abc(t)
    var = c[1:] ** 2 - (a[1:] / a[:-1]) ** 2 * c[:-1] ** 2
    assert bool((var >= -1e-12).all())


def test_bad_processes_are_refused():
    from sdeflow.schedules import VE, VPCosine

    with pytest.raises(ValueError, match="finite logSNR"):
        LinearBridge(VPCosine())
    with pytest.raises(ValueError, match="sigma\\(0\\) = 0"):
        LinearBridge(VE())
    with pytest.raises(ValueError, match="theta"):
        MeanReverting(theta="square")
    with pytest.raises(ValueError, match="lam > 0"):
        MeanReverting(lam=0.0)
    with pytest.raises(ValueError, match="shape"):
        RDDM(alphas="cubic")
    with pytest.raises(ValueError, match="unknown process"):
        PROCESSES.lookup("nope")


# ---- parameterizations and the loss -------------------------------------------------------------
def _valid(param, name):
    return not (param == "i2sb" and not isinstance(PROCESSES[name](), LinearBridge))


@pytest.mark.parametrize("param", BRIDGE_PARAMETERIZATIONS)
@pytest.mark.parametrize("name", ["ddbm-vp", "i2sb", "ir-sde", "rddm"])
def test_parameterization_round_trip(param, name):
    if not _valid(param, name):
        with pytest.raises(ValueError, match="linear bridge"):
            BridgeDenoiser(lambda x, c, source: x, PROCESSES[name](), param)
        return
    g = torch.Generator().manual_seed(0)
    f = torch.randn(5, 3, generator=g, dtype=torch.float64)
    den = BridgeDenoiser(lambda x, c, source: f, PROCESSES[name](), param)
    y, x1 = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    for t in (0.05, 0.5, 0.95):
        x_hat = den(y, t, source=x1)
        torch.testing.assert_close(den.from_x_hat(x_hat, y, t, x1), f, rtol=1e-9, atol=1e-9)


def test_ddbm_preconditioning_gives_unit_variance():
    """DDBM's ``c_in`` and ``c_out`` make the network's input and target unit-variance for data and source
    with the stated second moments (a jointly Gaussian pair, Monte Carlo)."""
    from sdeflow.bridges import BridgeParameterization

    sd, ss, cov = 0.5, 0.7, 0.2
    p = BridgeParameterization("ddbm", sd, ss, cov)
    proc = PROCESSES["ddbm-vp"]()
    g = torch.Generator().manual_seed(0)
    n = 400_000
    chol = torch.linalg.cholesky(torch.tensor([[sd * sd, cov], [cov, ss * ss]], dtype=torch.float64))
    pair = torch.randn(n, 2, generator=g, dtype=torch.float64) @ chol.T
    x0, x1, z = pair[:, 0], pair[:, 1], torch.randn(n, generator=g, dtype=torch.float64)
    for t in (0.1, 0.5, 0.9):
        a, b, c = (float(v) for v in proc.abc(t))
        c_in, skip, src, out = (float(v) for v in p.coefficients(proc, t))
        x_t = a * x0 + b * x1 + c * z
        target = (x0 - skip * (x_t - b * x1) - src * x1) / out
        tol = 4 * math.sqrt(2 / n)  # the variance of a unit Gaussian's sample variance is 2 / n
        assert float((c_in * x_t).var()) == pytest.approx(1.0, abs=tol)
        assert float(target.var()) == pytest.approx(1.0, abs=tol)


@pytest.mark.parametrize("param", ["x0", "eps", "residual", "ddbm"])
def test_loss_is_least_at_the_exact_field(param):
    """At the exact field the x0-weighted loss is the posterior variance; a shift ``delta`` of ``x_hat`` adds
    ``delta^2`` (up to a Monte Carlo cross term, bounded below)."""
    pairs = ring_pairs()
    proc = PROCESSES["ddbm-vp"]()
    oracle = pairs.denoiser(proc)
    g = torch.Generator().manual_seed(3)
    n = 20_000
    x0, x1 = pairs.sample(n, g)
    shift = {"delta": 0.0}
    holder = {}

    def net(x_in, c, source):  # the network that gives the oracle's x_hat (+ delta) in this parameterization
        t = c.to(torch.float64)
        den = holder["den"]
        y = den.to_residual(x_in / _in(den, t, x_in), t, source)
        return den.from_x_hat(oracle(y, t, source=source) + shift["delta"], y, t, source)

    den = holder["den"] = BridgeDenoiser(net, proc, param)
    loss = BridgeLoss("x0")
    t = torch.full((n,), 0.4, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    exact = loss(den, x0, cond={"source": x1}, t=t, eps=eps).mean()
    shift["delta"] = 0.1
    moved = loss(den, x0, cond={"source": x1}, t=t, eps=eps).mean()
    # moved - exact = delta^2 + 2 delta mean(x_hat - x0); the mean has standard error sqrt(exact / (n D))
    cross = 2 * 0.1 * 4 * math.sqrt(float(exact) / (n * 2))
    assert float(moved - exact) == pytest.approx(0.01, abs=cross)
    assert float(moved) > float(exact)


def _in(den, t, x):
    c_in = den.parameterization.coefficients(den.process, t)[0]
    return c_in.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


# ---- the exact posterior -------------------------------------------------------------------------
def test_paired_posterior_matches_the_mixture_posterior():
    pairs = ring_pairs()
    x1 = one_source(pairs, 1)
    post = analytic.ring_2d().posterior(A2, x1[0], 0.3)
    mine = pairs.posterior(x1[0])
    torch.testing.assert_close(mine.weights, post.weights, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(mine.means, post.means, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(mine.cov.dense(), post.cov.dense(), rtol=1e-9, atol=1e-12)


def test_oracle_ends():
    """At the pinned end the oracle knows only the source (``E[x0 | x1]``); at ``t = 0`` the residual is the data."""
    pairs = ring_pairs()
    x1 = one_source(pairs, 3)
    den = pairs.denoiser(PROCESSES["brownian"]())
    y = torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(den(torch.zeros_like(x1), 1.0, source=x1), pairs.posterior(x1[0]).mean().expand(3, 2))
    torch.testing.assert_close(den(y, 0.0, source=x1), y)


def test_boot_step_law():
    """The boot step draws ``N(a m, c^2 I)`` with ``m = E[x0 | x1]`` exactly; the true law of ``y`` there,
    ``N(a m, c^2 I + a^2 Cov[x0 | x1])`` for a Gaussian prior, is at most ``exp(2 lam)`` away in relative variance."""
    prior = analytic.gaussian(torch.tensor([0.5, -1.0]), torch.tensor([[1.0, 0.3], [0.3, 0.5]]))
    pairs = PairedMixture(prior, A2, 0.2)
    proc = PROCESSES["ddbm-vp"]()
    n = 200_000
    x1 = one_source(pairs, n)
    t_b = float(bridge_grid(proc, 5)[1])
    out = sample_bridge(pairs.denoiser(proc), Boot(DDIM()), torch.tensor([1.0, t_b]), x1,
                        generator=torch.Generator().manual_seed(0)).x
    a, _, c = (float(v) for v in proc.abc(t_b))
    post = pairs.posterior(x1[0])
    b = float(proc.abc(t_b)[1])  # the run returns states x = y + b x1
    torch.testing.assert_close(out.mean(0), a * post.mean() + b * x1[0], rtol=0, atol=5 * c / math.sqrt(n))
    torch.testing.assert_close(torch.cov(out.T), c * c * torch.eye(2, dtype=torch.float64), rtol=0,
                               atol=5 * c * c * math.sqrt(2 / n))
    rel = a * a * float(torch.linalg.eigvalsh(post.covariance()).max()) / (c * c)
    assert rel <= math.exp(2 * float(proc.residual_logsnr(t_b))) * float(torch.linalg.eigvalsh(post.covariance()).max()) + 1e-12
    assert rel < 5e-3


# ---- deterministic samplers on the residual: convergence orders --------------------------------
@pytest.mark.parametrize("sampler,order", [(DDIM(), 1), (DPMSolverPP(order=2, variant="heun", lower_order_final=False), 2),
                                           pytest.param(DPMSolver(order=3, form="data"), 3, marks=pytest.mark.slow),
                                           (Heun(), 2)])
@pytest.mark.parametrize("name", [pytest.param("ddbm-vp", marks=pytest.mark.slow), pytest.param("i2sb", marks=pytest.mark.slow),
                                  "ir-sde"])
def test_convergence_order_on_the_residual(sampler, order, name):
    """From a state after the boot step (``lam = -1``) to ``lam = 3``: the error against the exact flow map of the
    Gaussian posterior falls at the sampler's order. (A multistep method's first-order first step caps it at
    2 on this short span, so third order is checked with the single-step DPM-Solver++ 3.)"""
    prior = analytic.gaussian(torch.tensor([0.5, -1.0]), torch.tensor([[1.0, 0.3], [0.3, 0.5]]))
    pairs = PairedMixture(prior, A2, 0.2)
    proc = PROCESSES[name]()
    residual = proc.residual
    x1 = one_source(pairs, 8)
    post = pairs.posterior(x1[0])
    t0 = float(residual.t_from_logsnr(torch.tensor(-1.0, dtype=torch.float64)))
    t1 = float(residual.t_from_logsnr(torch.tensor(3.0, dtype=torch.float64)))
    y0 = post.sample_t(8, residual, t0, torch.Generator().manual_seed(1))[0]
    exact = post.flow_map(y0, residual, t0, t1)
    errs = []
    for n in (16, 32, 64):
        grid = logsnr_grid(n, residual, t_max=t0, t_min=t1, denoise_to_zero=False) if not isinstance(sampler, Heun) \
            else torch.linspace(t0, t1, n + 1, dtype=torch.float64)
        out = sample(pairs.denoiser(proc), sampler, grid, y0, cond={"source": x1}).x
        errs.append(float((out - exact).norm(dim=1).max()))
    slope = math.log(errs[0] / errs[2]) / math.log(4)  # the asymptotic slope, 16 to 64 steps
    assert slope > order - 0.3, errs


# ---- the output law against the exact posterior ----------------------------------------------------
@pytest.mark.parametrize("name", ["ddbm-vp", pytest.param("ir-sde", marks=pytest.mark.slow),
                                  pytest.param("rddm", marks=pytest.mark.slow)])
def test_output_law_converges_to_the_posterior(name):
    """Sliced Wasserstein distance to exact posterior draws: shrinks with NFE and at 24 steps is within
    twice the distance between two exact sample sets (the Monte Carlo floor, measured here)."""
    pairs = ring_pairs()
    proc = PROCESSES[name]()
    n = 4000
    x1 = one_source(pairs, n, seed=7)
    ref = pairs.sample_posterior(x1, torch.Generator().manual_seed(2))
    floor = metrics.sliced_wasserstein(ref, pairs.sample_posterior(x1, torch.Generator().manual_seed(3)))
    errs = []
    for steps in (3, 24):
        out = sample_bridge(pairs.denoiser(proc), "unipc-bh2", bridge_grid(proc, steps), x1,
                            generator=torch.Generator().manual_seed(5)).x
        errs.append(metrics.sliced_wasserstein(out, ref))
    assert errs[1] < errs[0]
    assert errs[1] < 2 * floor + 0.005, (errs, floor)


# ---- published samplers = sdeflow's updates on the residual (float64) --------------------------------
def _run(pairs, proc, sampler, ts, x1, seed, start=None):
    """sdeflow's run, as the states ``x_t``; from ``start`` (a state at ``ts[0]``) when given."""
    den = pairs.denoiser(proc)
    if start is None:
        return sample_bridge(den, sampler, ts, x1, generator=torch.Generator().manual_seed(seed)).x
    b0, b1 = (float(proc.abc(float(t))[1]) for t in (ts[0], ts[-1]))
    y = sample(den, sampler, ts, start - b0 * x1, cond={"source": x1}, noise=torch.Generator().manual_seed(seed)).x
    return y + b1 * x1


def _peer_denoise(pairs, proc, x1):
    den = pairs.denoiser(proc)
    return lambda x, t: den(den.to_residual(x, t, x1) if hasattr(den, "to_residual") else x - float(proc.abc(t)[1]) * x1,
                            t, source=x1)


@pytest.mark.parametrize("name", ["ddbm-vp", "i2sb"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_dbim_is_ddim_on_the_residual(name, eta):
    pairs, proc = ring_pairs(), PROCESSES[name]()
    x1 = pairs.sample(6, torch.Generator().manual_seed(4))[1]
    ts = peers.dbim_grid(7)
    mine = _run(pairs, proc, Boot(DDIM(eta=eta)), ts, x1, seed=9)
    theirs, nfe = peers.dbim(_peer_denoise(pairs, proc, x1), proc, x1, ts, torch.Generator().manual_seed(9), eta=eta)
    assert nfe == 8
    torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-10)


def test_dbim_second_order_is_dpm_solver_pp_on_the_residual():
    pairs, proc = ring_pairs(), PROCESSES["ddbm-vp"]()
    x1 = pairs.sample(6, torch.Generator().manual_seed(4))[1]
    ts = peers.dbim_grid(8)
    mine = _run(pairs, proc, BRIDGE_SAMPLERS["dbim-2"](), ts, x1, seed=9)
    theirs, _ = peers.dbim(_peer_denoise(pairs, proc, x1), proc, x1, ts, torch.Generator().manual_seed(9), order=2)
    torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-10)


def test_mrs_is_dpm_solver_pp_on_the_residual():
    """MRS's data-prediction update on IR-SDE's process (x-space, the exponential integrator in log(a/c)) is
    DPM-Solver++ on the residual, from the same start."""
    pairs, proc = ring_pairs(), PROCESSES["ir-sde"]()
    x1 = pairs.sample(6, torch.Generator().manual_seed(4))[1]
    ts = torch.linspace(1.0, 1e-3, 9, dtype=torch.float64)
    start_x = x1 + proc.lam * torch.randn(x1.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for order in (1, 2):
        mine = _run(pairs, proc, DPMSolverPP(order=order, variant="heun"), ts, x1, 0, start=start_x)
        theirs, _ = peers.mrs(_peer_denoise(pairs, proc, x1), proc, x1, ts, start_x, order=order)
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-10)


def test_i2sb_is_boot_and_ddpm_on_the_residual():
    pairs, proc = ring_pairs(), PROCESSES["i2sb"]()
    x1 = pairs.sample(6, torch.Generator().manual_seed(4))[1]
    ts = torch.linspace(1.0, 0.0, 9, dtype=torch.float64)
    mine = _run(pairs, proc, BRIDGE_SAMPLERS["i2sb"](), ts, x1, seed=9)
    theirs, nfe = peers.i2sb(_peer_denoise(pairs, proc, x1), proc, x1, ts, torch.Generator().manual_seed(9))
    assert nfe == 8
    torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-10)


def _gap_order(run_pair, steps=(16, 32, 64)):
    """The order at which two discretisations of one equation (with shared noise) approach each other."""
    gaps = [float((a - b).abs().max()) for a, b in (run_pair(n) for n in steps)]
    return math.log(gaps[0] / gaps[-1]) / math.log(steps[-1] / steps[0]), gaps


def test_irsde_is_euler_maruyama_of_the_same_sde():
    """IR-SDE's Euler-Maruyama in ``x_t`` and sdeflow's on the residual discretise one SDE (the residual
    carries the shift ``b_t x1`` exactly, where the state's Euler step approximates it): with shared noise
    they meet at first order as the steps shrink."""
    pairs, proc = ring_pairs(), PROCESSES["ir-sde"]()
    x1 = pairs.sample(6, torch.Generator().manual_seed(4))[1]

    def pair(n):
        ts = torch.linspace(1.0, 0.02, n + 1, dtype=torch.float64)
        mine = _run(pairs, proc, BRIDGE_SAMPLERS["ir-sde"](), ts, x1, seed=9)
        return mine, peers.irsde(_peer_denoise(pairs, proc, x1), proc, x1, ts, torch.Generator().manual_seed(9))[0]

    order, gaps = _gap_order(pair)
    assert order > 0.8, gaps


@pytest.mark.parametrize("churn", [0.0, pytest.param(0.33, marks=pytest.mark.slow)])
def test_ddbm_sampler_is_heun_and_euler_maruyama_of_the_same_equations(churn):
    """DDBM's x-space SDE and ODE (with the h-transform's ``grad log q(x1 | x_t)``) are the residual's reverse
    SDE and probability-flow ODE: its sampler and :class:`DDBMHeun` on the residual, from the same start with
    shared noise, meet as the steps shrink, at least at first order (measured: 1.4 for Heun alone, whose
    16 to 64 steps from ``1 - 1e-4`` are not yet asymptotic next to the pinned end's stiffness; 1 with
    Euler-Maruyama churn steps). Equations that differed would not meet at all."""
    pairs, proc = ring_pairs(), PROCESSES["ddbm-vp"]()
    x1 = pairs.sample(6, torch.Generator().manual_seed(4))[1]

    def pair(n):
        ts = peers.ddbm_grid(proc, n)[:-1]  # to DDBM's t_min (above clean data)
        mine = _run(pairs, proc, DDBMHeun(churn=churn), ts, x1, 9, start=x1)
        theirs, nfe = peers.ddbm(_peer_denoise(pairs, proc, x1), proc, x1, ts, torch.Generator().manual_seed(9), churn=churn)
        assert nfe == DDBMHeun(churn=churn).count_nfe(proc.residual, ts)
        return mine, theirs

    got, gaps = _gap_order(pair, steps=(16, 32, 64, 128))
    assert got > 0.8 and gaps[-1] < 5e-3, gaps


# ---- names, NFE and bad input --------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BRIDGE_SAMPLERS))
def test_bridge_samplers_count_their_evaluations(name):
    pairs, proc = ring_pairs(), PROCESSES["ddbm-vp"]()
    x1 = pairs.sample(4, torch.Generator().manual_seed(4))[1].float()
    res = sample_bridge(pairs.denoiser(proc), name, bridge_grid(proc, 6), x1, generator=torch.Generator().manual_seed(0))
    sampler = bridge_sampler(name)
    boot = sampler if isinstance(sampler, Boot) else Boot(sampler)
    assert res.nfe == boot.count_nfe(proc.residual, bridge_grid(proc, 6))
    assert res.x.dtype == torch.float32 and bool(torch.isfinite(res.x).all())


def test_bad_input_is_refused_before_work():
    pairs, proc = ring_pairs(), PROCESSES["ddbm-vp"]()
    den = pairs.denoiser(proc)
    x1 = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="starts at the source"):
        sample_bridge(den, "dbim", torch.tensor([0.9, 0.0]), x1)
    with pytest.raises(ValueError, match="shaped like the state"):
        sample(den, DDIM(), torch.tensor([0.9, 0.0]), torch.zeros(3, 2), cond={"source": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="pass cond"):
        sample(den, DDIM(), torch.tensor([0.9, 0.0]), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="NaN"):
        sample_bridge(den, "dbim", bridge_grid(proc, 3), torch.full((3, 2), float("nan")))
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_bridge(den, "nope", bridge_grid(proc, 3), x1)
    with pytest.raises(ValueError, match="steps >= 1"):
        bridge_grid(proc, 0)
    with pytest.raises(ValueError, match="churn"):
        DDBMHeun(churn=1.0)
    with pytest.raises(ValueError, match="not pinned"):
        sample_bridge(pairs.denoiser(PROCESSES["ir-sde"]()), "dbim", bridge_grid(proc, 3), x1)
    with pytest.raises(ValueError, match="unknown bridge parameterization"):
        BridgeDenoiser(lambda x, c, source: x, proc, "v")


# ---- training, checkpoints and restoring ----------------------------------------------------------
def test_bridge_training_resumes_exactly_and_restores(tmp_path, capsys):
    """``sdeflow train --process``: a run stopped and resumed ends with the weights of an uninterrupted one
    (the sources are drawn from each step's generator), its checkpoint records the process and how the
    source is made, and it loads as a bridge that ``sdeflow restore`` uses."""
    from sdeflow.bridges import restore
    from sdeflow.cli.main import main
    from sdeflow.pretrained import load_model
    from cases import resumes_exactly
    from sdeflow.training.config import TrainConfig

    def cfg(out, steps):
        return TrainConfig(data="digits", out=str(tmp_path / out), process="i2sb", parameterization="x0", steps=steps,
                           batch_size=16, checkpoint_every=2, sample_every=0, model={"base": 8}, degrade="inpaint")

    meta = resumes_exactly(tmp_path, cfg)
    assert meta["config"]["process"] == "i2sb" and meta["config"]["degrade"] == "inpaint"
    assert meta["network"]["source"] is True
    model = load_model(str(tmp_path / "ref"), bridges=True)
    assert isinstance(model.denoiser, BridgeDenoiser) and model.denoiser.process == PROCESSES["i2sb"]()
    source = torch.zeros(3, *model.shape)
    out = restore(model.denoiser, source, 4, generator=torch.Generator().manual_seed(0))
    assert out.nfe == 4 and bool(torch.isfinite(out.x).all())
    capsys.readouterr()
    assert main(["restore", "--checkpoint", str(tmp_path / "ref"), "--nfe", "3", "--out", ""]) == 0
    assert "bridge (i2sb" in capsys.readouterr().out
    assert main(["restore", "--checkpoint", str(tmp_path / "ref"), "--method", "mmps", "--out", ""]) == 1
    assert main(["sample", "--checkpoint", str(tmp_path / "ref"), "--out", str(tmp_path / "x.png")]) == 1
    assert "sdeflow restore --checkpoint" in capsys.readouterr().err


def test_bad_bridge_training_settings_are_refused():
    from sdeflow.training.config import TrainConfig

    with pytest.raises(ValueError, match="unknown process"):
        TrainConfig(process="nope").resolved()
    with pytest.raises(ValueError, match="parameterization"):
        TrainConfig(process="i2sb", parameterization="velocity").resolved()
    with pytest.raises(ValueError, match="unknown operator"):
        TrainConfig(process="i2sb", degrade="nope").resolved()
    with pytest.raises(ValueError, match="degrade_noise"):
        TrainConfig(process="i2sb", degrade_noise=-1.0).resolved()
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(process="i2sb", objective="reflow", teacher="digits").resolved()


# ---- DDBM / DBIM models ----------------------------------------------------------------------------
class _TinyDDBMNet(torch.nn.Module):
    """A small randomly initialised network with DDBM's call, ``net(x, c_noise, xT=x1)``."""

    def __init__(self, dim=2):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(2 * dim + 1, dim, generator=g, dtype=torch.float64) / 2)

    def forward(self, x, c, xT=None):
        return torch.tanh(torch.cat([x, xT, c[:, None] / 1000], 1) @ self.w)


@pytest.mark.parametrize("mode", ["vp", "ve"])
def test_ddbm_models_load_as_bridges(mode):
    """:func:`sdeflow.adapters.from_ddbm`: the process' ``(a, b, c)`` equal DDBM's own formulas, the wrapped
    ``x_hat`` equals DDBM's preconditioned denoiser, and DBIM's sampler (from its paper) on the network
    equals sdeflow's ``dbim`` (float64)."""
    from sdeflow.adapters import from_ddbm

    net = _TinyDDBMNet()
    den = from_ddbm(net, mode, sigma_data=0.5, cov_xy=0.1)
    scale = 1.0 if mode == "vp" else 80.0
    t = torch.tensor([0.05, 0.3, 0.7, 0.999], dtype=torch.float64)
    src_coef, data_coef, c = peers.ddbm_abc(mode, scale * t)
    a, b, cc = den.process.abc(t)
    torch.testing.assert_close((a, b, cc), (data_coef, src_coef, c), rtol=1e-10, atol=1e-12)
    g = torch.Generator().manual_seed(1)
    x_t, x1 = torch.randn(4, 2, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)
    for k in range(4):
        theirs = peers.ddbm_denoise(net, mode, x_t, scale * float(t[k]), x1, cov_xy=0.1)
        mine = den(den.to_residual(x_t, float(t[k]), x1), float(t[k]), source=x1)
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-10)
    ts = peers.dbim_grid(6)
    with torch.no_grad():
        mine = sample_bridge(den, "dbim", ts, x1, generator=torch.Generator().manual_seed(3)).x
        theirs, _ = peers.dbim(lambda x, u: peers.ddbm_denoise(net, mode, x, scale * u, x1, cov_xy=0.1), den.process, x1, ts,
                               torch.Generator().manual_seed(3))
    torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="unknown DDBM process"):
        from_ddbm(net, "edm")


def test_ddbm_checkpoints_load_into_their_network(tmp_path):
    """A DDBM checkpoint saved through DistributedDataParallel (``module.`` names) loads into the network; a
    checkpoint of another network is refused with the names, the weights untouched."""
    from sdeflow.adapters import load_ddbm_weights

    saved = _TinyDDBMNet()
    with torch.no_grad():
        saved.w.mul_(3.0)
    path = tmp_path / "ema_0.9999_000100.pt"
    torch.save({f"module.{k}": v for k, v in saved.state_dict().items()}, path)
    net = load_ddbm_weights(_TinyDDBMNet(), path)
    torch.testing.assert_close(net.w, saved.w)
    other = _TinyDDBMNet(dim=3)
    before = other.w.detach().clone()
    with pytest.raises(ValueError, match="another shape w"):
        load_ddbm_weights(other, path)
    torch.testing.assert_close(other.w, before)
    with pytest.raises(ValueError, match="unexpected extra"):
        load_ddbm_weights(_TinyDDBMNet(), {"w": saved.w.detach(), "extra": torch.zeros(1)})

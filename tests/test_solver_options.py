"""The practical options of the ODE solvers: warm-up and final orders, adaptive tolerance,
final denoising step, thresholding, grids and their NFE."""

import math
import sys

import pytest
import torch

from sdeflow import analytic, grids, sample
from sdeflow.registry import GRIDS, SAMPLERS
from sdeflow.denoisers import DynamicThresholding, ModelDenoiser
from sdeflow.samplers import DPMSolverAdaptive, DPMSolverPP, RK45, UniPC
from sdeflow.schedules import EDM, RectifiedFlow, VPCosine, VPLinear, ddpm_linear

GAUSS = analytic.random_mixture(4, 1, structure="full", seed=3)


def history_lengths(sampler, n, sch=VPLinear()):
    plan = sampler.prepare(sch, grids.logsnr_grid(n, sch, denoise_to_zero=False))
    return [len(c[2]) for c in plan.coef]


def test_warm_up_and_lower_order_final():
    assert history_lengths(DPMSolverPP(order=3), 20) == [1, 2] + [3] * 18       # warm-up only (n >= 15)
    assert history_lengths(DPMSolverPP(order=3), 6) == [1, 2, 3, 3, 2, 1]       # and lower orders at the end
    assert history_lengths(DPMSolverPP(order=3, lower_order_final=False), 6) == [1, 2, 3, 3, 3, 3]


def test_corrector_costs_no_evaluation():
    sch = VPLinear()
    ts = grids.logsnr_grid(8, sch)
    x, _ = GAUSS.sample_t(8, sch, 1.0, torch.Generator().manual_seed(0))
    for s in [UniPC(order=3), DPMSolverPP(order=3, corrector=True), UniPC(order=2, corrector=False)]:
        assert sample(GAUSS.denoiser(sch), s, ts, x).nfe == 8


@pytest.mark.parametrize("sampler", [UniPC(order=2), UniPC(order=3), DPMSolverPP(order=3, corrector=True)],
                         ids=["unipc-bh2-2", "unipc-bh2-3", "dpm++3m-unic"])
def test_data_form_step_from_pure_noise_is_the_limit(sampler):
    """A first step from t = 1 of rectified flow (logSNR = -inf) and its corrector take the limits
    of the weights of a step from just after t = 1, not a first-order fallback."""
    sch = RectifiedFlow()

    def first_step(t0):
        plan = sampler.prepare(sch, torch.tensor([t0, 0.5, 0.2, 0.0], dtype=torch.float64))
        c_x, c_hat, c_hist, _, (kx, kh, knew, _), _ = plan.coef[0]
        return torch.tensor([c_x, c_hat + sum(c_hist), *c_hist, kx, *kh, knew], dtype=torch.float64)

    limit, near, nearer = first_step(1.0), first_step(1.0 - 1e-6), first_step(1.0 - 1e-12)
    assert (nearer - limit).abs().max() < 1e-9 < (near - limit).abs().max()


def test_bh1_corrector_from_pure_noise_uses_bounded_weights():
    """bh1's B(h) = h is unbounded; from pure noise its corrector takes bh2's weights."""
    sch, ts = RectifiedFlow(), torch.tensor([1.0, 0.6, 0.3, 0.0], dtype=torch.float64)
    bh1, bh2 = UniPC(order=2, variant="bh1").prepare(sch, ts), UniPC(order=2).prepare(sch, ts)
    assert bh1.coef[0][4][:3] == bh2.coef[0][4][:3]
    assert bh1.coef[1][4][:3] != bh2.coef[1][4][:3]


@pytest.mark.parametrize("sampler", [DPMSolverAdaptive(order=2), DPMSolverAdaptive(order=3), RK45()],
                         ids=["dpm-12", "dpm-23", "rk45"])
@pytest.mark.parametrize("sch", [VPLinear(), RectifiedFlow()], ids=["vp", "rf"])
def test_adaptive_reaches_tolerance(sampler, sch):
    """Tighter tolerances cost more NFE and give proportionally smaller errors against the exact map."""
    t0, t1 = 1.0, float(sch.t_from_sigma_ratio(0.01))
    x, _ = GAUSS.sample_t(32, sch, t0, torch.Generator().manual_seed(0))
    exact = GAUSS.flow_map(x, sch, t0, t1)
    nfes, errs = [], []
    for tol in [1e-3, 1e-4, 1e-5]:
        s = type(sampler)(**{**sampler.__dict__, "rtol": tol, "atol": tol})
        r = sample(GAUSS.denoiser(sch), s, torch.tensor([t0, t1], dtype=torch.float64), x)
        nfes.append(r.nfe)
        errs.append(float((r.x - exact).abs().max()))
    assert nfes[0] <= nfes[1] <= nfes[2] and nfes[0] < nfes[2]
    assert errs[2] < errs[1] < errs[0] or (errs[2] < errs[0] and nfes[0] == nfes[1])
    assert errs[2] < 50 * 1e-5  # the error is a modest multiple of the requested tolerance


ADAPTIVE_TOLS = {"dpm-12": [1e-3, 1e-6], "dpm-23": [1e-3, 1e-6, 1e-9], "rk45": [1e-3, 1e-6, 1e-9]}


ADAPTIVE_SCHEDULES = {"vp": VPLinear, "cosine": VPCosine, "rf": RectifiedFlow, "edm": EDM}


@pytest.mark.parametrize("name,sched", [(n, s) if s == "vp" or n == "dpm-23" else pytest.param(n, s, marks=pytest.mark.slow)
                                        for n in sorted(ADAPTIVE_TOLS) for s in ADAPTIVE_SCHEDULES])
def test_adaptive_meets_tight_tolerances_down_to_clean_data(name, sched):
    """Over the whole interval to t = 0 (the denoising jump included), the error against the exact
    probability-flow map is a small multiple of the requested tolerance, down to 1e-9 (float64). By
    default every adaptive sampler on VP and DPM-Solver-23 on every schedule; the rest in the slow set."""
    sch = ADAPTIVE_SCHEDULES[sched]()
    make = {"dpm-12": lambda tol: DPMSolverAdaptive(order=2, rtol=tol, atol=tol),
            "dpm-23": lambda tol: DPMSolverAdaptive(order=3, rtol=tol, atol=tol),
            "rk45": lambda tol: RK45(rtol=tol, atol=tol)}[name]
    t0 = grids.start_time(sch)
    x, _ = GAUSS.sample_t(16, sch, t0, torch.Generator().manual_seed(0))
    x = x.double()
    exact = GAUSS.flow_map(x, sch, t0, 0.0)
    for tol in ADAPTIVE_TOLS[name]:
        r = sample(GAUSS.denoiser(sch), make(tol), [t0, 0.0], x)
        assert float((r.x - exact).abs().max()) < 20 * tol, tol


def test_adaptive_stop_is_configurable_and_stays_in_a_discrete_schedule():
    """A discrete schedule is integrated to its first training index (never below) and finished
    with the jump from there; ``sigma_stop`` moves the jump to a given noise level."""
    sch = ddpm_linear()
    x, _ = GAUSS.sample_t(8, sch, 1.0, torch.Generator().manual_seed(0))
    x = x.double()
    t_min = sch.t_min
    exact = GAUSS.x_hat(GAUSS.flow_map(x, sch, 1.0, t_min), sch, t_min)
    r = sample(GAUSS.denoiser(sch), DPMSolverAdaptive(rtol=1e-6, atol=1e-6), [1.0, 0.0], x)
    assert float((r.x - exact).abs().max()) < 2e-5
    sch = VPLinear()
    stop = 0.05
    t_stop = float(sch.t_from_sigma_ratio(stop))
    exact = GAUSS.x_hat(GAUSS.flow_map(x, sch, 1.0, t_stop), sch, t_stop)
    r = sample(GAUSS.denoiser(sch), RK45(rtol=1e-8, atol=1e-8, sigma_stop=stop), [1.0, 0.0], x)
    assert float((r.x - exact).abs().max()) < 1e-6
    with pytest.raises(ValueError, match="sigma_stop"):
        RK45(sigma_stop=0.0)


def test_dynamic_thresholding():
    sch = VPLinear()
    big = ModelDenoiser(lambda x, t: 3 * x, sch, "x0")
    thr = DynamicThresholding(big, percentile=0.9, max_value=1.0)
    x = torch.randn(4, 1000)
    out = thr(x, 0.5)
    assert out.abs().max() <= 1.0 + 1e-6
    q = torch.quantile((3 * x).abs(), 0.9, dim=1, keepdim=True)
    assert torch.allclose(out, (3 * x).clamp(-q, q) / q, atol=1e-6)           # whole sample rescaled
    small = DynamicThresholding(ModelDenoiser(lambda x, t: 0.5 * x.clamp(-1, 1), sch, "x0"))
    assert torch.equal(small(x, 0.5), 0.5 * x.clamp(-1, 1))                      # in range: untouched
    r = sample(thr, SAMPLERS["dpm-solver++-2m"](), grids.uniform_grid(6), torch.randn(3, 50))
    assert r.x.abs().max() <= 1.0 + 1e-5


GRID_SCHEDULES = {"auto": EDM(), "uniform": VPLinear(), "quadratic": VPLinear(), "logsnr": VPLinear(), "karras": EDM(),
                  "polyexponential": EDM(), "shifted": RectifiedFlow(), "linspace": ddpm_linear(),
                  "leading": ddpm_linear(), "trailing": ddpm_linear()}


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("name", sorted(n for n in SAMPLERS if not SAMPLERS[n]().adaptive))
def test_every_sampler_and_grid_gives_the_declared_nfe(grid, name):
    sch = GRID_SCHEDULES[grid]
    sampler = SAMPLERS[name]()
    den = GAUSS.denoiser(sch)
    for n in [1, 2, 5]:
        ts = GRIDS[grid](n, sch)
        x, _ = GAUSS.sample_t(3, sch, float(ts[0]), torch.Generator().manual_seed(0))
        r = sample(den, sampler, ts, x.float())
        assert r.nfe == sampler.prepare(sch, ts).nfe and torch.isfinite(r.x).all()


@pytest.mark.parametrize("nfe", [1, 2, 5, 10, 11, 16, 50, 200])
def test_default_sampling_is_registered_and_runs_within_its_budget_on_every_schedule(schedule, nfe):
    from sdeflow.registry import default_sampling, steps_for_nfe

    name, grid = default_sampling(schedule, nfe)
    sampler = SAMPLERS[name]()
    ts = GRIDS[grid](steps_for_nfe(sampler, schedule, grid, nfe), schedule)
    mix = analytic.ring_2d()
    r = sample(mix.denoiser(schedule), sampler, ts, torch.randn(64, 2, generator=torch.Generator().manual_seed(0)))
    assert torch.isfinite(r.x).all() and r.nfe <= max(nfe, sampler.prepare(schedule, GRIDS[grid](1, schedule)).nfe)


def benchmark_module(name: str):
    """The script ``benchmarks/<name>.py`` loaded as a module (its folder on the path while it loads)."""
    import importlib.util
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(root))
    try:
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", root / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(root))
    return module


def test_the_defaults_are_the_rules_choice_on_the_stored_problem_families():
    """``DEFAULTS`` is what ``benchmarks/defaults.py``'s rule chooses from the stored measurements on the
    choosing problems (``docs/benchmarks/families.json``): the table in the code is the documented
    rule's answer, not a hand edit; so is ``choose_configuration``'s ``keep_default`` on the pilot
    measurements of the choosing problems (``families_pilot.json``). Every default takes one
    evaluation per step at every budget 1-100, so a budget is a step count for ``SdeflowScheduler``
    as well."""
    from sdeflow.samplers.names import DEFAULTS, default_for_family
    from sdeflow.tuning.choose import KEEP_DEFAULT

    rule = benchmark_module("defaults")
    assert rule.choose(rule.load(rule.FAMILIES)) == DEFAULTS
    # the pilot's preference for the default, chosen on the choosing problems' pilot measurements
    assert rule.keep_lines(rule.load(rule.FAMILIES), rule.load(rule.PILOT_OUT))[1] == KEEP_DEFAULT
    for fam, sched in (("vp", ddpm_linear()), ("sigma", EDM()), ("flow", RectifiedFlow())):
        for nfe in range(1, 101):
            name, grid = default_for_family(fam, nfe)
            assert SAMPLERS[name]().prepare(sched, GRIDS[grid](nfe, sched)).nfe == nfe, (fam, nfe, name, grid)


def test_the_tails_report_reads_the_worst_draws_share_from_the_two_rms():
    """``benchmarks/defaults_tails.py`` recovers the share of the squared error that the worst 1% of
    the draws carry from the RMS over all draws and the RMS without them, as ``families.py`` stores."""
    from sdeflow.tuning.draws import trimmed_rms

    tails = benchmark_module("defaults_tails")
    g = torch.Generator().manual_seed(0)
    for n, outliers in ((512, 0), (512, 3), (250, 9)):
        sq = torch.rand(n, generator=g, dtype=torch.float64) ** 4
        sq[:outliers] = 1e3 * (1 + torch.rand(outliers, generator=g, dtype=torch.float64))
        worst = torch.topk(sq, int(tails.TAIL * n)).values.sum() / sq.sum()
        share = tails.tail_share(float(sq.mean().sqrt()), float(trimmed_rms(sq, tails.TAIL)), n)
        assert share == pytest.approx(float(worst), rel=1e-9)


def test_the_fitted_gaussian_of_a_family_problem_is_its_samples_mean_and_covariance():
    """``families.py --gaussian --fit N`` measures on the Gaussian ``sdeflow tune --on gaussian`` fits: the
    mean and unbiased covariance of N samples of the problem's data (reassembled from the fit's basis),
    which approach the data's exact moments as N grows; ``fit`` without ``gaussian`` is refused."""
    families = benchmark_module("families")
    problem, params = families.draw_problem(1005)
    mix = problem.mixture
    for n in (200, 20000):
        mean, cov = families.data_moments(mix, n, 7)
        x = mix.sample(n, torch.Generator().manual_seed(7))
        # float64 floors, measured: the mean 0, the covariance reassembled from its eigenbasis 1.3e-14 relative
        assert torch.allclose(mean, x.mean(0), rtol=0, atol=1e-15)
        assert torch.allclose(cov, torch.cov(x.T), rtol=1e-12, atol=1e-15)
    # the mean's error is about sqrt(tr(cov) / n): within 5 of those at n = 20000
    assert float((mean - mix.mean()).norm()) < 5 * math.sqrt(float(mix.covariance().trace()) / 20000)
    with pytest.raises(ValueError, match="gaussian=True"):
        families.measure(1005, budgets=[1], fit=100)


def test_the_verified_pilot_benchmark_estimates_what_the_library_picks_on():
    """``benchmarks/pilot_verify.py`` simulates ``choose_configuration(verify=16)`` from per-draw errors and
    endpoints on the whole pool: given the teacher's per-draw errors, its estimates of the finalists' RMS
    are the library's (measured: equal to the last bit) and its pick is the library's pick (two pilots, two picks)."""
    from sdeflow import grids
    from sdeflow.schedules import SCHEDULES
    from sdeflow.tuning import choose_configuration
    from sdeflow.tuning.choose import VERIFY_PILOT, candidates
    from sdeflow.tuning.draws import Teacher

    verify = benchmark_module("pilot_verify")
    sch = SCHEDULES["vp-linear"]()
    mix = analytic.random_mixture(4, 3, spread=4.0, seed=2)
    den = mix.denoiser(sch)
    x = mix.sample_t(96, sch, grids.start_time(sch), torch.Generator().manual_seed(1))[0]
    few = {"samplers": ["ddim", "ipndm", "unipc-bh2"], "teacher_steps": 60}
    options = candidates(sch, 8, few["samplers"])
    teacher = Teacher(den, x, steps=60)
    ends = torch.stack([sample(den, s, ts, x).x for _, _, s, ts in options.values()])
    errors = (ends - teacher.end).pow(2).sum(-1)
    for seed in (0, 3):
        chosen = choose_configuration(den, 8, x, verify=verify.CHECKED, seed=seed, **few)
        piloted = torch.randperm(96, generator=torch.Generator().manual_seed(seed))[:VERIFY_PILOT]
        est = verify.verified_estimate(errors, ends, piloted)
        keys = list(options)
        assert keys[int(torch.argmin(est))] == f"{chosen.sampler} ({chosen.chosen_grid})"
        for i in torch.nonzero(torch.isfinite(est)).flatten().tolist():
            assert math.sqrt(float(est[i])) == pytest.approx(chosen.hand[keys[i]], rel=1e-12)


def test_the_family_benchmark_judges_the_tuners_moved_grids_as_the_tuner_runs_them(tmp_path):
    """``families.py --moved`` measures the grids ``choose_configuration`` moves to where sdeflow samples from
    (uniform and quadratic on a flow, from 0.999): each error is that of the tuner's own candidate on the
    same draws (measured: equal to the last bit); ``joined`` sets them beside the grids as ``sdeflow sample``
    runs them (the judge), and ``tuner_candidates`` keeps them in those grids' place (the tuner's pick)."""
    from sdeflow.tuning.choose import candidates

    families = benchmark_module("families")
    flow = families.SCHEDULE_OF["flow"]
    assert families.moved_grids(flow) == ["uniform", "quadratic"]
    assert families.moved_grids(families.SCHEDULE_OF["vp"]) == families.moved_grids(families.SCHEDULE_OF["sigma"]) == []
    assert families.moved_name("ipndm (uniform)", "flow") == "ipndm (uniform from 0.999)"
    assert families.plain_name("ipndm (uniform from 0.999)") == "ipndm (uniform)" == families.plain_name("ipndm (uniform)")
    assert families.moved_name("ipndm (auto)", "flow") == "ipndm (auto)"  # auto starts at 0.999 already
    assert families.moved_name("ipndm (uniform)", "vp") == "ipndm (uniform)"  # nothing moves on VP
    moved = families.measure(1005, budgets=[3, 6], samples=16, moved=True)
    assert list(moved["processes"]) == ["flow"]
    record = moved["processes"]["flow"]
    problem = families.draw_problem(1005)[0]
    problem = families.Problem(problem.name, problem.mixture, problem.shape, 16)
    process = next(p for p in families.PROCESSES if p.time_input == "t")
    shared, den = families.Shared(problem, process, seed=1005), families.sdeflow_denoiser(problem, process)
    checked = 0
    for j, nfe in enumerate((3, 6)):
        for key, (_, _, sampler, ts) in candidates(flow, nfe).items():
            name = families.moved_name(key, "flow")
            if name == key or record["errors"][record["configs"].index(name)][j] is None:
                continue
            x = sample(den, sampler, ts, shared.x_init(float(ts[0]))).x
            rms = float((x - shared.reference(float(ts[0]), 0.0, steps=400)).pow(2).sum(1).mean().sqrt())
            assert record["errors"][record["configs"].index(name)][j] == pytest.approx(rms, rel=1e-12)
            checked += 1
    assert checked >= 40  # 13 samplers on two grids at two budgets, less those a budget cannot reach
    path = str(tmp_path / "m.json")
    plain = {"process": "x", "configs": ["ddim (uniform)", "ddim (auto)"], **{m: [[2.0], [3.0]] for m in families.MEASURES}}
    families.save(path, {"budgets": [3], "problems": {"1005": {"processes": {"flow": plain}}}})
    families.save(families.moved_path(path), {"budgets": [3], "problems": {"1005": {"processes": {"flow": {
        "configs": ["ddim (uniform from 0.999)"], **{m: [[1.0]] for m in families.MEASURES}}}}}})
    judge = families.joined(path)["problems"]["1005"]["processes"]["flow"]
    assert judge["configs"] == ["ddim (uniform)", "ddim (auto)", "ddim (uniform from 0.999)"]
    assert judge["errors"] == [[2.0], [3.0], [1.0]] and judge["medians"] == [[2.0], [3.0], [1.0]]
    errors = dict(zip(judge["configs"], (e[0] for e in judge["errors"])))
    assert families.tuner_candidates(errors, "flow") == {"ddim (auto)": 3.0, "ddim (uniform from 0.999)": 1.0}
    assert families.tuner_candidates({"ddim (uniform)": 2.0}, "flow") == {"ddim (uniform)": 2.0}  # no moved run
    with pytest.raises(SystemExit, match="lacks problems 1006"):
        families.joined(path, seeds=["1005", "1006"])


@pytest.mark.parametrize("sampler", [RK45(), DPMSolverAdaptive()], ids=["rk45", "dpm-23"])
def test_adaptive_solvers_on_a_bfloat16_state_do_not_chase_unreachable_tolerances(sampler):
    """A bfloat16 state cannot hold relative errors below 2^-8; the tolerance is floored there, so
    the run takes a few hundred evaluations (RK45 took over 40000, rejecting steps to max_steps)."""
    sch = EDM()
    x, _ = GAUSS.sample_t(8, sch, 0.999, torch.Generator().manual_seed(0))
    r = sample(GAUSS.denoiser(sch), sampler, grids.karras_grid(6, sch, t_max=0.999), x.to(torch.bfloat16))
    exact = GAUSS.flow_map(x.double(), sch, 0.999, 0.0)
    assert r.nfe < 2000 and torch.isfinite(r.x.float()).all()
    assert float((r.x.double() - exact).abs().max()) < 0.1 * float(exact.abs().max())

"""The contract every registered sampler keeps (later samplers get it by joining the registry).

The default run checks every sampler on a representative schedule, and every schedule with one
sampler of each kind (:func:`kind`: the engine it is built on, stochastic or not); the full cross
products are marked slow (CI runs them). The domain property is read from a dry run of the plan, which
fixes the evaluation times of every sampler that does not choose its steps while sampling."""

import pytest
import torch

from sdeflow import analytic, grids, sample
from sdeflow.registry import SAMPLERS
from sdeflow.denoisers import Denoiser, ModelDenoiser
from sdeflow.noise import SeededNoise
from sdeflow.parameterizations import V
from sdeflow.sampling import NonFiniteError
from sdeflow.schedules import EDM, RectifiedFlow, VPCosine, VPLinear, ddpm_linear

from cases import REPRESENTATIVES, cross  # noqa: F401

NAMES = sorted(SAMPLERS)
SCHEDS = {"vp": VPLinear(), "rf": RectifiedFlow(), "edm": EDM(), "ddpm": ddpm_linear(), "cosine": VPCosine()}
MIX = analytic.random_mixture(6, 3, seed=0)




def problem(sch, batch=4, dtype=torch.float32):
    x, _ = MIX.sample_t(batch, sch, 1.0, torch.Generator().manual_seed(1))
    return MIX.denoiser(sch), x.reshape(batch, 2, 3).to(dtype)


def nfe_ok(sampler, sch, ts, counted):
    """Declared NFE equals counted NFE; error-controlled samplers declare None and count > 0."""
    declared = sampler.prepare(sch, torch.as_tensor(ts, dtype=torch.float64)).nfe
    return counted > 0 if declared is None else counted == declared


def ts_for(sch, n):
    return grids.karras_grid(n, sch, t_max=0.999) if isinstance(sch, EDM) else grids.uniform_grid(n)


@pytest.mark.parametrize("name,sched", cross(NAMES, sorted(SCHEDS), "ddpm"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_nfe_determinism(name, sched, dtype):
    sch, sampler = SCHEDS[sched], SAMPLERS[name]()
    den, x = problem(sch, dtype=dtype)
    ts = ts_for(sch, 7)
    noise = SeededNoise([11, 12, 13, 14])
    r1 = sample(den, sampler, ts, x, noise=noise)
    r2 = sample(den, sampler, ts, x, noise=SeededNoise([11, 12, 13, 14]))
    assert r1.x.shape == x.shape and r1.x.dtype == dtype
    assert torch.isfinite(r1.x).all()
    assert nfe_ok(sampler, sch, ts, r1.nfe)
    assert torch.equal(r1.x, r2.x)  # seeded: reproducible and re-entrant
    assert torch.equal(x, problem(sch, dtype=dtype)[1])  # the input is not modified


@pytest.mark.parametrize("name", [n for n in NAMES if not SAMPLERS[n]().couples_batch])
def test_results_do_not_depend_on_batch_composition(name):
    sch = VPLinear()
    den, x = problem(sch)
    ts = grids.uniform_grid(6)
    full = sample(den, SAMPLERS[name](), ts, x, noise=SeededNoise([5, 6, 7, 8])).x
    part = sample(den, SAMPLERS[name](), ts, x[2:], noise=SeededNoise([7, 8])).x
    assert torch.allclose(full[2:], part, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("ts", [[1.0, 0.0], [1.0, 0.5], [0.9, 0.3, 0.0], [1.0, 0.97, 0.5, 0.49, 0.1, 0.0]])
def test_any_grid_of_length_two_or_more(name, ts):
    sch = RectifiedFlow()
    den, x = problem(sch)
    sampler = SAMPLERS[name]()
    r = sample(den, sampler, ts, x, noise=SeededNoise([1, 2, 3, 4]))
    assert torch.isfinite(r.x).all() and nfe_ok(sampler, sch, ts, r.nfe)


@pytest.mark.parametrize("name", NAMES)
def test_callback_and_trajectory(name):
    sch = VPLinear()
    den, x = problem(sch)
    seen = []
    r = sample(den, SAMPLERS[name](), grids.uniform_grid(5), x, callback=seen.append, return_trajectory=True,
               noise=SeededNoise([1, 2, 3, 4]))
    assert [s.i for s in seen] == list(range(5)) and seen[-1].s == 0.0
    assert r.trajectory.shape == (6, *x.shape)
    assert torch.equal(r.trajectory[0], x) and torch.equal(r.trajectory[-1], r.x)
    assert all(s.x_hat is not None and s.x_hat.shape == x.shape for s in seen)


@pytest.mark.parametrize("name,sched", cross(NAMES, ["vp", "rf", "cosine", "edm"], "cosine"))
def test_bfloat16_model_stays_finite(name, sched):
    """A v-prediction network in bfloat16, with zero-terminal SNR (cosine at t = 1) included."""
    sch = SCHEDS[sched]

    def net(x_in, t):
        x_t = x_in.double()
        return MIX.network_output(x_t, sch, t.double(), V()).to(torch.bfloat16)

    den = ModelDenoiser(net, sch, "v", time_input="t", dtype=torch.bfloat16)
    _, x = problem(sch)
    for dtype in [torch.float32, torch.bfloat16]:
        r = sample(den, SAMPLERS[name](), ts_for(sch, 6), x.to(dtype), noise=SeededNoise([1, 2, 3, 4]))
        assert r.x.dtype == dtype and torch.isfinite(r.x.float()).all()


def test_non_finite_model_output_names_step_and_time():
    sch = RectifiedFlow()
    net = lambda x, t: torch.where(t[:, None] < 0.5, torch.nan, 0.0) * x  # noqa: E731
    den = ModelDenoiser(net, sch, "velocity")
    with pytest.raises(NonFiniteError, match=r"step 3 \(t = 0\.4"):
        sample(den, SAMPLERS["euler"](), grids.uniform_grid(5), torch.randn(3, 2))


def test_wrong_arguments_are_refused():
    den, x = problem(VPLinear())
    with pytest.raises(TypeError, match="Denoiser"):
        sample(lambda x, t: x, SAMPLERS["euler"](), grids.uniform_grid(3), x)
    with pytest.raises(TypeError, match="Sampler"):
        sample(den, "euler", grids.uniform_grid(3), x)
    with pytest.raises(ValueError, match="decreasing"):
        sample(den, SAMPLERS["euler"](), [0.0, 1.0], x)
    with pytest.raises(ValueError, match="eta"):
        SAMPLERS["ddim"]().__class__(eta=2.0)


def test_a_single_non_finite_value_is_always_reported():
    """A NaN in one pixel may slip past the per-step spot check, but never past the final check;
    check_finite='full' names its step."""
    sch = RectifiedFlow()

    def net(x, t):
        out = torch.zeros_like(x)
        if float(t[0]) < 0.5:
            out[0, 0, 5] = torch.nan
        return out

    den = ModelDenoiser(net, sch, "velocity")
    x = torch.randn(2, 3, 5000)
    with pytest.raises(NonFiniteError):
        sample(den, SAMPLERS["euler"](), grids.uniform_grid(5), x)
    with pytest.raises(NonFiniteError, match=r"step 3 \(t = 0\.4"):
        sample(den, SAMPLERS["euler"](), grids.uniform_grid(5), x, check_finite="full")
    with pytest.raises(ValueError, match="check_finite"):
        sample(den, SAMPLERS["euler"](), grids.uniform_grid(5), x, check_finite="sometimes")
    assert not torch.isfinite(sample(den, SAMPLERS["euler"](), grids.uniform_grid(5), x, check_finite=False).x).all()


class Recording(Denoiser):
    """The exact denoiser, recording every time the sampler evaluates it at (its velocity on clean data
    included: a Runge-Kutta stage of rk4-at-data)."""

    def __init__(self, sch):
        super().__init__(sch)
        self.inner, self.times = MIX.denoiser(sch), []

    def forward(self, x_t, t, **cond):
        self.times.extend(torch.as_tensor(t, dtype=torch.float64).reshape(-1).tolist())
        return self.inner(x_t, t, **cond)

    def has_ode_velocity(self, t):
        return self.inner.has_ode_velocity(t)

    def ode_velocity(self, x_t, t, **cond):
        self.times.append(float(t))
        return self.inner.ode_velocity(x_t, t, **cond)


def _domain_cases():
    from sdeflow.registry import GRIDS, SCHEDULES

    for sched in sorted(SCHEDULES):
        discrete = hasattr(SCHEDULES[sched](), "num_steps")
        for grid in sorted(GRIDS):
            if (grid in ("linspace", "leading", "trailing")) != discrete and grid in ("linspace", "leading", "trailing"):
                continue
            yield sched, grid


def dry_run_times(sampler, sch, ts) -> list[float]:
    """The times a fixed-grid sampler evaluates the field at on ``ts``: fixed by its plan, so a run with a
    field of zeros and no noise finds them without evaluating a model."""
    from sdeflow.sampling import planned

    plan = planned(sampler, sch, ts)
    times = []

    class Zero:
        def __call__(self, x, t, **jump):
            times.append(float(t))
            return torch.zeros_like(x)

        def ode_velocity(self, x, t):
            return self(x, t)

    x, field = torch.zeros(1, 1, dtype=torch.float64), Zero()
    state = sampler.init_state(x, plan)
    for i in range(len(plan.t)):
        x, state = sampler.step(field, x, i, plan, state, lambda draw=0, span=None: torch.zeros_like(x))
    return times


def _domain_schedules() -> list[str]:
    return sorted({sched for sched, _ in _domain_cases()})


@pytest.mark.parametrize("name,schedule", cross([n for n in NAMES if not SAMPLERS[n]().adaptive], _domain_schedules(),
                                                "ddpm-linear"))
def test_the_plan_evaluates_only_inside_the_schedules_domain(name, schedule):
    """Every time a fixed-grid sampler's plan evaluates the model at lies in ``t_min <= t <= 1`` (a discrete
    schedule: training index >= 0), on every grid kind (discrete schedules also at 40 steps, where
    quadratic and uniform grids once fell below the first training index). By default every sampler on
    a discrete schedule and the representative samplers on every schedule; the rest in the slow set."""
    from sdeflow.registry import GRIDS, SCHEDULES

    sampler = SAMPLERS[name]()
    for sched, grid in _domain_cases():
        if sched != schedule:
            continue
        sch = SCHEDULES[sched]()
        for n in ((12, 40) if sch.t_min > 0 else (12,)):
            times = dry_run_times(sampler, sch, GRIDS[grid](n, sch))
            assert times and min(times) >= sch.t_min - 1e-15 and max(times) <= 1.0, (sched, grid, n, min(times))


@pytest.mark.parametrize("name,case", cross([n for n in NAMES if SAMPLERS[n]().adaptive], list(_domain_cases()),
                                            ("ddpm-linear", "quadratic"), representatives=False))
def test_the_field_is_only_evaluated_inside_the_schedules_domain(name, case):
    """The same with the model itself, for the samplers that choose their steps while sampling."""
    sched, grid = case
    from sdeflow.registry import GRIDS, SCHEDULES

    sch = SCHEDULES[sched]()
    rec = den = Recording(sch)
    x, _ = MIX.sample_t(3, sch, 0.999, torch.Generator().manual_seed(1))
    for n in ((12, 40) if sch.t_min > 0 else (12,)):  # 40 steps: where grids would cross a first index
        ts = GRIDS[grid](n, sch)
        rec.times.clear()
        sample(den, SAMPLERS[name](), ts, x.reshape(3, 2, 3), noise=SeededNoise([1, 2, 3]))
        assert rec.times and min(rec.times) >= sch.t_min - 1e-15 and max(rec.times) <= 1.0, (n, min(rec.times))


@pytest.mark.parametrize("name,sched", cross([n for n in NAMES if not SAMPLERS[n]().adaptive], ["ddpm", "cosine", "edm"],
                                             "ddpm", representatives=False))
def test_a_dry_run_finds_the_times_a_real_run_evaluates(name, sched):
    """What the domain test relies on: a fixed-grid sampler evaluates the model at the same times whatever
    the model returns (the mixture's field here, zeros in the dry run)."""

    sch = SCHEDS[sched]
    rec = Recording(sch)
    ts = ts_for(sch, 9) if sched == "edm" else grids.quadratic_grid(9, t_min=sch.t_min)
    x, _ = MIX.sample_t(3, sch, float(ts[0]), torch.Generator().manual_seed(1))
    sample(rec, SAMPLERS[name](), ts, x, noise=SeededNoise([1, 2, 3]))
    assert rec.times == dry_run_times(SAMPLERS[name](), sch, ts)


def test_model_denoiser_coefficients_follow_a_replaced_schedule():
    """ModelDenoiser caches its per-time coefficients; replacing its schedule (or parameterization)
    must not reuse the old ones."""
    from sdeflow.schedules import scaled_linear

    net = lambda x, c: 0.1 * x  # noqa: E731
    den = ModelDenoiser(net, ddpm_linear(), "eps", time_input="index")
    x = torch.randn(3, 4, dtype=torch.float64)
    den(x, 0.5)
    den.schedule = scaled_linear()
    fresh = ModelDenoiser(net, scaled_linear(), "eps", time_input="index")
    assert torch.equal(den(x, 0.5), fresh(x, 0.5))

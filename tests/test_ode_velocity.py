"""The probability-flow velocity on clean data, and the Runge-Kutta steps that evaluate it there.

At ``sigma = 0`` every model's ``x_hat`` is ``x_t / alpha``, so ``x_hat`` does not fix the field
``u = alpha' x_hat + sigma' eps_hat``; a network that predicts the noise in some form does. These tests
check that velocity against the exact field of a Gaussian mixture (whose noise prediction vanishes on
clean data), that the samplers using it converge at their order onto ``t = 0``, and that a model that
cannot give it is refused before any evaluation.
"""

import math

import pytest
import torch

from sdeflow import analytic, grids, guidance, sample
from sdeflow.denoisers import ModelDenoiser
from sdeflow.parameterizations import PARAMETERIZATIONS, as_parameterization, velocity_from_x_hat
from sdeflow.registry import SAMPLERS
from sdeflow.samplers import RK4, FittedSampler, Heun
from sdeflow.samplers.fitted import coefficient_values
from sdeflow.schedules import EDM, RectifiedFlow, Trigonometric, VPLinear

MIX = analytic.random_mixture(3, 3, seed=4)
NOISE_FORMS = ["eps", "v", "velocity", "edm"]  # the parameterizations that carry the noise on clean data
FINITE = {"rectified-flow": RectifiedFlow(), "edm": EDM(), "trigonometric": Trigonometric()}  # sigma'(0) finite


def exact_network(mix, sch, param, calls=None):
    """A network answering ``mix.network_output`` in ``param`` with time input ``t``."""
    p = as_parameterization(param)

    def net(x_in, c):
        if calls is not None:
            calls.append(float(c[0]))
        t = c.to(torch.float64)
        x_t = x_in.to(torch.float64) / p.input_scale(sch, t).reshape(-1, *([1] * (x_in.ndim - 1)))
        return mix.network_output(x_t, sch, t, p).to(x_in.dtype)

    return ModelDenoiser(net, sch, param, time_input="t")


@pytest.mark.parametrize("param", NOISE_FORMS)
@pytest.mark.parametrize("sched", sorted(FINITE))
def test_a_noise_predicting_network_gives_the_exact_velocity_down_to_clean_data(sched, param):
    """Above clean data the network's velocity is the mixture's field; on clean data it is the field's
    limit ``(alpha'/alpha) x`` (the noise term of a smooth density vanishes), continuous from above."""
    sch = FINITE[sched]
    den = exact_network(MIX, sch, param)
    x = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for t in (0.7, 0.2, 0.01):
        assert torch.allclose(den.ode_velocity(x, t), MIX.velocity(x, sch, t), rtol=1e-7, atol=1e-8)
    assert den.has_ode_velocity(0.0)
    at_data = den.ode_velocity(x, 0.0)
    assert torch.allclose(at_data, x * float(sch.d_alpha(0.0) / sch.alpha(0.0)), atol=1e-12)
    near = MIX.velocity(x, sch, 1e-9 / float(sch.d_sigma(0.0)))  # sigma = 1e-9
    assert float((at_data - near).abs().max()) < 1e-3 * (1 + float(near.abs().max()))
    oracle = MIX.denoiser(sch)
    assert oracle.has_ode_velocity(0.0) and torch.allclose(oracle.ode_velocity(x, 0.0), at_data, atol=1e-12)


def test_which_models_have_a_velocity_on_clean_data():
    """x0 and score networks do not carry the noise there, and VP's sigma' is infinite at t = 0;
    above clean data every model has one."""
    for param in sorted(PARAMETERIZATIONS):
        for sched, sch in {**FINITE, "vp-linear": VPLinear()}.items():
            den = exact_network(MIX, sch, param)
            assert den.has_ode_velocity(0.5)
            assert den.has_ode_velocity(0.0) == (param in NOISE_FORMS and sched != "vp-linear"), (param, sched)
            if not den.has_ode_velocity(0.0):
                with pytest.raises(ValueError, match="t = 0"):
                    den.ode_velocity(torch.zeros(2, 3), 0.0)
    assert not MIX.denoiser(VPLinear()).has_ode_velocity(0.0)


def uniform_to_zero(n, sch):
    return grids.karras_grid(n, sch, t_max=0.5) if isinstance(sch, EDM) else grids.uniform_grid(n, 0.9, 0.0)


def errors_to_zero(sampler, sch, steps):
    """Endpoint RMS on one Gaussian against its exact probability-flow map onto t = 0."""
    gauss = analytic.random_mixture(4, 1, structure="full", seed=3)
    t0 = float(uniform_to_zero(steps[0], sch)[0])
    x, _ = gauss.sample_t(64, sch, t0, torch.Generator().manual_seed(0))
    exact = gauss.flow_map(x, sch, t0, 0.0)
    return [float((sample(gauss.denoiser(sch), sampler, uniform_to_zero(n, sch), x).x - exact).pow(2).sum(1).mean().sqrt())
            for n in steps]


def fitted_order(steps, errs):
    lx, ly = torch.log(torch.tensor(steps, dtype=torch.float64)), torch.log(torch.tensor(errs, dtype=torch.float64))
    return -float(((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum())


@pytest.mark.parametrize("variant", ["classical", "3/8"])
@pytest.mark.parametrize("sched", ["rectified-flow", "trigonometric"])
def test_rk4_at_data_is_fourth_order_onto_clean_data_and_beats_its_heun_ending(sched, variant):
    """RK4 (classical and the 3/8 rule) with its fourth stage on clean data keeps order 4 through the last
    step (the default ends with Heun's third-order step) and is the more accurate of the two at every
    step count."""
    sch, steps = FINITE[sched], [24, 48, 96]
    errs = errors_to_zero(RK4(variant=variant, at_data=True), sch, steps)
    assert abs(fitted_order(steps, errs) - 4) <= 0.4, errs
    default = errors_to_zero(RK4(variant=variant), sch, steps)
    assert all(a < b for a, b in zip(errs, default)), (errs, default)


def test_heun_at_data_is_second_order_onto_clean_data():
    """Heun's full step onto clean data (EDM's rule ends with Euler there) stays second order."""
    steps = [16, 32, 64]
    errs = errors_to_zero(Heun(at_data=True), RectifiedFlow(), steps)
    assert abs(fitted_order(steps, errs) - 2) <= 0.3, errs


def test_rk4_at_data_spends_four_evaluations_per_step_and_falls_back_where_the_velocity_is_unbounded():
    sch = RectifiedFlow()
    for n in (1, 3, 5):
        ts = grids.uniform_grid(n)
        plan = RK4(at_data=True).prepare(sch, ts)
        assert plan.nfe == 4 * n and plan.velocity_at == (0.0,)
        assert RK4().prepare(sch, ts).nfe == 4 * n - 1
    with pytest.raises(ValueError, match="variant"):
        RK4(variant="ralston")
    vp = VPLinear()
    ts = grids.logsnr_grid(5, vp)
    assert RK4(at_data=True).prepare(vp, ts).nfe == RK4().prepare(vp, ts).nfe
    assert RK4(at_data=True).prepare(vp, ts).velocity_at == ()


def test_a_model_without_a_velocity_on_clean_data_is_refused_before_any_evaluation():
    calls = []
    den = exact_network(MIX, RectifiedFlow(), "x0", calls)
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="clean data") as err:
        sample(den, SAMPLERS["rk4-at-data"](), grids.uniform_grid(4, 0.9), x)
    assert calls == [] and "at_data" in str(err.value)
    assert sample(den, SAMPLERS["rk4"](), grids.uniform_grid(4, 0.9), x).nfe == 15


def test_a_velocity_network_samples_with_rk4_at_data_as_the_oracle_does():
    """The network path (its own output on clean data) and the oracle's exact limit agree, with
    every evaluation of the network counted."""
    sch = RectifiedFlow()
    calls = []
    den = exact_network(MIX, sch, "velocity", calls)
    x = torch.randn(32, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ts = grids.uniform_grid(5)
    got = sample(den, RK4(at_data=True), ts, x)
    ref = sample(MIX.denoiser(sch), RK4(at_data=True), ts, x)
    assert got.nfe == len(calls) == 20 and calls[-1] == 0.0
    assert torch.allclose(got.x, ref.x, atol=1e-10)


def test_cfg_on_clean_data_is_cfg_on_the_velocities():
    """On clean data a guided model's velocity is CFG applied to the conditional and unconditional
    velocities (CFG is affine, so it means the same there as on x_hat above clean data); rules that
    are not affine have no velocity there."""
    sch = RectifiedFlow()

    class Conditional(ModelDenoiser):
        """A stand-in whose unconditional pass (``scale=0``) answers half the network's output."""

        def network_output(self, x_t, t, scale=1.0, **cond):
            return super().network_output(x_t, t) * (1.0 if scale else 0.5)

        def forward(self, x_t, t, scale=1.0, **cond):
            return self.parameterization.to_x_hat(self.network_output(x_t, t, scale), x_t, self.schedule, t)

    den = Conditional(exact_network(MIX, sch, "velocity").model, sch, "velocity", time_input="t")
    null = {"scale": 0.0}
    guided = guidance.Guided(den, 3.0, null=null)
    x = torch.randn(8, 3, dtype=torch.float64)
    pos, neg = den.ode_velocity(x, 0.0), den.ode_velocity(x, 0.0, **null)
    assert guided.has_ode_velocity(0.0) and not torch.allclose(pos, neg)
    assert torch.allclose(guided.ode_velocity(x, 0.0), neg + 3.0 * (pos - neg), atol=1e-12)
    above = velocity_from_x_hat(guided(x, 0.4), x, sch, 0.4)  # above clean data: the guided x_hat's velocity
    assert torch.allclose(guided.ode_velocity(x, 0.4), above, atol=1e-10)
    rescaled = guidance.Guided(den, guidance.CFGRescale(3.0), null=null)
    assert not rescaled.has_ode_velocity(0.0) and rescaled.has_ode_velocity(0.4)
    with pytest.raises(ValueError, match="clean data"):
        sample(rescaled, RK4(at_data=True), grids.uniform_grid(2), x)


def test_fitted_coefficients_run_on_rk4_at_data():
    """Zero shifts reproduce the base sampler; the stage on clean data is structure, not a coefficient."""
    sch = RectifiedFlow()
    ts = grids.uniform_grid(3)
    base = RK4(at_data=True)
    values = coefficient_values(base.prepare(sch, ts).coef)
    fitted = FittedSampler(base, tuple(ts.tolist()), (0.0,) * len(values))
    x = torch.randn(8, 3, dtype=torch.float64)
    den = MIX.denoiser(sch)
    assert torch.equal(sample(den, fitted, ts, x).x, sample(den, base, ts, x).x)
    assert math.isfinite(sum(values))

import math

import pytest
import torch

from sdeflow import schedules as S
from sdeflow.schedules.base import Schedule


def interior(schedule, n=201):
    lo = max(schedule.t_min, 1e-4)
    return torch.linspace(lo, 1 - 1e-4, n, dtype=torch.float64)


def test_logsnr_strictly_decreasing(schedule):
    lam = schedule.logsnr(interior(schedule))
    assert torch.isfinite(lam).all()
    assert (lam[1:] < lam[:-1]).all()


def test_logsnr_inverse(schedule):
    t = interior(schedule)
    back = schedule.t_from_logsnr(schedule.logsnr(t))
    assert torch.allclose(back, t, atol=1e-9, rtol=0)


def test_generic_bisection_inverse():
    class Custom(Schedule):  # alpha = 1 - t^2, sigma = t: only the base class's bisection inverts it
        def alpha(self, t):
            return 1 - torch.as_tensor(t, dtype=torch.float64) ** 2

        def sigma(self, t):
            return torch.as_tensor(t, dtype=torch.float64)

    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    assert torch.allclose(Custom().t_from_logsnr(Custom().logsnr(t)), t, atol=1e-12)


@pytest.mark.parametrize("name", ["alpha", "sigma", "logsnr"])
def test_derivatives_match_autograd(schedule, name):
    t = interior(schedule, 37).requires_grad_(True)
    f = getattr(schedule, name)(t)
    auto = torch.autograd.grad(f.sum(), t)[0] if f.requires_grad else torch.zeros_like(f)  # constant alpha
    closed = getattr(schedule, "d_" + name)(t.detach())
    if isinstance(schedule, S.DiscreteVP):  # piecewise: compare away from the knots only
        keep = ((t.detach() * schedule.num_steps) % 1 - 0.5).abs() < 0.45
        auto, closed = auto[keep], closed[keep]
    assert torch.allclose(closed, auto, rtol=1e-8, atol=1e-10)


def test_variance_preserving_identity():
    for sch in [S.VPLinear(), S.VPCosine(), S.ddpm_linear(), S.scaled_linear(), S.Trigonometric()]:
        t = interior(sch)
        assert torch.allclose(sch.alpha(t) ** 2 + sch.sigma(t) ** 2, torch.ones_like(t), atol=1e-12)


def test_boundary_values():
    for sch in [S.VPLinear(), S.VPCosine(), S.RectifiedFlow(), S.Trigonometric(), S.EDM(), S.ddpm_linear()]:
        assert float(sch.alpha(0.0)) == pytest.approx(1.0, abs=1e-12)
        assert float(sch.sigma(0.0)) == pytest.approx(0.0, abs=1e-12)
        assert float(sch.logsnr(0.0)) == math.inf
    assert float(S.RectifiedFlow().alpha(1.0)) == 0.0 and float(S.RectifiedFlow().sigma(1.0)) == 1.0
    assert float(S.VPCosine().alpha(1.0)) < 1e-15 and float(S.Trigonometric().alpha(1.0)) < 1e-15
    assert float(S.EDM().sigma(1.0)) == pytest.approx(80.0)
    assert float(S.VE().sigma(0.0)) == pytest.approx(0.01) and float(S.VE().sigma(1.0)) == pytest.approx(50.0)
    vp = S.VPLinear()  # alpha(1) = exp(-(beta_max - beta_min)/4 - beta_min/2)
    assert float(vp.alpha(1.0)) == pytest.approx(math.exp(-19.9 / 4 - 0.05), rel=1e-12)


def test_discrete_reproduces_alphas_cumprod():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ac = torch.cumprod(1 - betas, 0)
    sch = S.ddpm_linear()
    n = torch.arange(1000)
    t = sch.t_from_index(n)
    assert torch.allclose(t, (n + 1).double() / 1000)
    assert torch.allclose(sch.alpha(t) ** 2, ac, rtol=1e-12)
    assert torch.allclose(sch.index_from_t(t), n.double())
    # scaled_linear: betas are linear in sqrt(beta) and come back from the schedule
    sl = S.scaled_linear()
    a2 = sl.alphas_cumprod
    b = 1 - a2[1:] / a2[:-1]
    assert torch.allclose(b.sqrt(), torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64)[1:], rtol=1e-9)


def test_discrete_rejects_bad_tables():
    with pytest.raises(ValueError, match="strictly decreasing"):
        S.DiscreteVP(torch.tensor([0.9, 0.95, 0.5]))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        S.DiscreteVP(torch.tensor([0.9, 0.5, 0.0]))
    with pytest.raises(ValueError, match="betas"):
        S.DiscreteVP.from_betas(torch.tensor([0.1, 1.5]))


def _near_ends(dtype):
    """Both ends and points a few ulps inside them, in ``dtype``, plus a dense grid between."""
    tiny = torch.finfo(dtype).tiny
    eps = torch.finfo(dtype).eps
    ends = [0.0, tiny, 2 * tiny, 5e-324 if dtype == torch.float64 else tiny, eps, 3 * eps,
            1.0, 1.0 - eps / 2, 1.0 - eps, 1.0 - 3 * eps]
    return torch.cat([torch.tensor(ends, dtype=dtype), torch.linspace(0, 1, 1001, dtype=dtype)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_boundary_values_are_exact_and_nothing_is_nan(schedule, dtype):
    """For every schedule: alpha(0) = 1 exactly (sigma(0) = 0 unless the schedule is VE-like), no NaN
    in alpha, sigma, logSNR and their derivatives anywhere on [0, 1] including points a few ulps
    from both ends (so no CPU's rounding can produce one), logSNR decreasing, infinite only where
    sigma or alpha is exactly 0."""
    t = _near_ends(dtype)
    a, s, lam = schedule.alpha(t), schedule.sigma(t), schedule.logsnr(t)
    assert float(schedule.alpha(0.0)) == 1.0
    if not isinstance(schedule, S.VE):
        assert float(schedule.sigma(0.0)) == 0.0 and float(schedule.logsnr(0.0)) == math.inf
    for name, v in [("alpha", a), ("sigma", s)]:
        assert torch.isfinite(v).all(), name
        assert (v >= 0).all() and (v <= (1 if not isinstance(schedule, (S.VE, S.EDM)) else math.inf)).all(), name
    assert not torch.isnan(lam).any()
    assert ((lam != math.inf) | (s == 0)).all() and ((lam != -math.inf) | (a == 0)).all()
    order = torch.argsort(t.double(), stable=True)
    assert (lam[order][1:] <= lam[order][:-1]).all()
    for name in ["d_alpha", "d_sigma", "d_logsnr"]:
        d = getattr(schedule, name)(t)
        assert not torch.isnan(d).any(), name
        inside = lam.abs() < 300  # beyond, a derivative such as -1/t overflows: large, not wrong
        assert torch.isfinite(d[inside]).all(), name
    if float(schedule.logsnr(1.0)) < -30:  # zero terminal SNR holds exactly, not up to round-off
        assert float(schedule.alpha(1.0)) == 0.0 and float(schedule.logsnr(1.0)) == -math.inf


def test_logsnr_inverse_is_accurate_near_both_ends(schedule):
    """t_from_logsnr(logsnr(t)) = t also for t within 1e-12 of the ends (relative to the time)."""
    t = torch.tensor([1e-12, 1e-9, 1e-6, 1 - 1e-6, 1 - 1e-9], dtype=torch.float64)
    t = t[(t >= schedule.t_min) & torch.isfinite(schedule.logsnr(t))]
    back = schedule.t_from_logsnr(schedule.logsnr(t))
    assert torch.allclose(back, t, rtol=1e-6, atol=1e-15)


PARAMETERS = {  # for every schedule class: two instances that differ in one defining parameter
    "VPLinear": (S.VPLinear(), S.VPLinear(beta_max=10.0)),
    "VPCosine": (S.VPCosine(), S.VPCosine(s=0.01)),
    "DiscreteVP": (S.ddpm_linear(), S.scaled_linear()),
    "DiscreteVP-steps": (S.ddpm_linear(1000), S.ddpm_linear(500)),
    "DiscreteVP-last": (S.DiscreteVP(torch.tensor([0.9, 0.5, 0.1])), S.DiscreteVP(torch.tensor([0.9, 0.5, 0.2]))),
    "VE": (S.VE(), S.VE(sigma_max=20.0)),
    "EDM": (S.EDM(), S.EDM(sigma_max=40.0)),
    "RectifiedFlow": (S.RectifiedFlow(), None),
    "Trigonometric": (S.Trigonometric(), None),
}


def test_every_schedule_class_is_covered_by_the_value_semantics_test():
    classes = {type(a).__name__ for a, _ in PARAMETERS.values()}
    for cls in [S.VPLinear, S.VPCosine, S.DiscreteVP, S.VE, S.EDM, S.RectifiedFlow, S.Trigonometric]:
        assert cls.__name__ in classes


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_schedules_have_value_semantics(name):
    """Equal exactly when every defining parameter is equal (tensors by content); equal schedules
    hash equal. Caches of planned coefficients key on schedules, so this is what keeps them apart."""
    a, b = PARAMETERS[name]
    rebuilt = type(a)(**{k: (v.clone() if torch.is_tensor(v) else v) for k, v in a.__dict__.items() if not k.startswith("_")})
    assert a == rebuilt and hash(a) == hash(rebuilt)
    if b is not None:
        t = torch.tensor([0.3, 0.7])
        assert a != b and not (torch.equal(a.alpha(t), b.alpha(t)) and torch.equal(a.sigma(t), b.sigma(t)))


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_sampling_one_schedule_after_another_equals_a_fresh_cache(name):
    """Planned coefficients are cached by (sampler, schedule, grid): sampling two schedules on the
    same grid in one process gives what each gives with an empty cache."""
    from sdeflow import analytic, sample, sampling
    from sdeflow.samplers import DPMSolverPP

    a, b = PARAMETERS[name]
    if b is None:
        return
    mix = analytic.random_mixture(3, 2, seed=0)
    ts = torch.tensor([0.99, 0.7, 0.5, 0.34, 0.0], dtype=torch.float64)  # inside a 3-step schedule's domain too
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    together = [sample(mix.denoiser(sch), DPMSolverPP(order=2), ts, x).x for sch in (a, b)]
    for sch, got in zip((a, b), together):
        sampling._PLANS.clear()
        alone = sample(mix.denoiser(sch), DPMSolverPP(order=2), ts, x).x
        assert torch.equal(got, alone)

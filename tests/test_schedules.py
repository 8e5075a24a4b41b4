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

import pytest
import torch

from sdeflow import analytic
from sdeflow.denoisers import ModelDenoiser
from sdeflow.parameterizations import PARAMETERIZATIONS, as_parameterization, eps_from_x_hat, score_from_x_hat, velocity_from_x_hat

NAMES = sorted(PARAMETERIZATIONS)


def times(schedule):
    return torch.tensor([max(schedule.t_min, 0.02), 0.3, 0.7, 0.97], dtype=torch.float64)


@pytest.mark.parametrize("name", NAMES)
def test_round_trip(schedule, name):
    p = as_parameterization(name)
    t = times(schedule)
    x_t = torch.randn(4, 3, dtype=torch.float64)
    f = torch.randn(4, 3, dtype=torch.float64)
    x_hat = p.to_x_hat(f, x_t, schedule, t)
    assert torch.allclose(p.from_x_hat(x_hat, x_t, schedule, t), f, rtol=1e-9, atol=1e-9)
    assert torch.allclose(p.to_x_hat(p.from_x_hat(x_hat, x_t, schedule, t), x_t, schedule, t), x_hat, rtol=1e-9, atol=1e-9)


def test_views_agree_with_the_oracle(schedule):
    """eps, score and velocity computed from x_hat equal the oracle's own closed forms, and v is
    alpha eps - sigma x_hat."""
    mix = analytic.random_mixture(3, 3, seed=1)
    t = times(schedule)
    x_t = torch.stack([mix.sample_t(1, schedule, float(ti))[0][0] for ti in t])
    x_hat = mix.x_hat(x_t, schedule, t)
    assert torch.allclose(eps_from_x_hat(x_hat, x_t, schedule, t), mix.eps(x_t, schedule, t), atol=1e-9)
    assert torch.allclose(score_from_x_hat(x_hat, x_t, schedule, t), mix.score(x_t, schedule, t), rtol=1e-8, atol=1e-8)
    assert torch.allclose(velocity_from_x_hat(x_hat, x_t, schedule, t), mix.velocity(x_t, schedule, t), rtol=1e-8, atol=1e-8)
    a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
    v = as_parameterization("v").from_x_hat(x_hat, x_t, schedule, t)
    assert torch.allclose(v, a * mix.eps(x_t, schedule, t) - s * x_hat, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_model_denoiser_recovers_exact_field(schedule, name):
    """A network that outputs the exact field in parameterization ``name`` (seeing in(t) x_t)
    gives back the oracle's x_hat through ModelDenoiser."""
    mix = analytic.random_mixture(2, 2, seed=3)
    p = as_parameterization(name)
    seen = {}

    def net(x_in, c):
        seen["c"] = c
        t_now = seen["t"]
        x_t = x_in / p.input_scale(schedule, t_now)[:, None]
        return p.from_x_hat(mix.x_hat(x_t, schedule, t_now), x_t, schedule, t_now)

    den = ModelDenoiser(net, schedule, name, time_input="logsnr")
    t = times(schedule)
    seen["t"] = t
    x_t = torch.randn(4, 2, dtype=torch.float64)
    assert torch.allclose(den(x_t, t), mix.x_hat(x_t, schedule, t), rtol=1e-8, atol=1e-8)
    assert torch.allclose(seen["c"], schedule.logsnr(t))


def test_time_inputs():
    from sdeflow.schedules import EDM, ddpm_linear

    got = {}
    net = lambda x, c: (got.__setitem__("c", c), x)[1]  # noqa: E731
    x = torch.zeros(2, 3)
    ModelDenoiser(net, ddpm_linear(), "x0", time_input="index")(x, torch.tensor([0.001, 1.0]))
    assert torch.allclose(got["c"], torch.tensor([0.0, 999.0]), atol=1e-5)
    ModelDenoiser(net, EDM(), "x0", time_input="sigma")(x, 0.5)
    assert got["c"].shape == (2,) and torch.allclose(got["c"], torch.tensor([40.0, 40.0]))
    ModelDenoiser(net, EDM(), "edm", time_input="edm")(x, 0.5)
    assert torch.allclose(got["c"], torch.full((2,), 0.25 * torch.log(torch.tensor(40.0)).item()))
    with pytest.raises(ValueError, match="DiscreteVP"):
        ModelDenoiser(net, EDM(), "x0", time_input="index")
    with pytest.raises(ValueError, match="allowed"):
        ModelDenoiser(net, EDM(), "epsilon")


def test_network_dtype_is_respected():
    from sdeflow.schedules import VPLinear

    dtypes = {}

    def net(x, c):
        dtypes["x"], dtypes["c"] = x.dtype, c.dtype
        return x

    out = ModelDenoiser(net, VPLinear(), "eps", dtype=torch.bfloat16)(torch.randn(2, 3), 0.5)
    assert dtypes == {"x": torch.bfloat16, "c": torch.float32} and out.dtype == torch.float32

import pytest
import torch

from sdeflow import grids
from sdeflow.registry import GRIDS
from sdeflow.schedules import EDM, RectifiedFlow, VPLinear, ddpm_linear


@pytest.mark.parametrize("name", sorted(GRIDS))
@pytest.mark.parametrize("n", [1, 2, 3, 10, 57])
def test_registry_grids_are_valid(schedule, name, n):
    if name in grids.DISCRETE_SPACINGS and not hasattr(schedule, "num_steps"):
        with pytest.raises(ValueError, match="discrete-time"):
            GRIDS[name](n, schedule)
        return
    ts = GRIDS[name](n, schedule)
    assert ts.dtype == torch.float64 and ts.shape == (n + 1,)
    assert (ts[1:] < ts[:-1]).all() and float(ts[-1]) == 0.0 and float(ts[0]) <= 1.0


def test_logsnr_grid_is_uniform_in_logsnr():
    sch = VPLinear()
    ts = grids.logsnr_grid(10, sch, t_min=1e-3)
    lam = sch.logsnr(ts[:-1])
    assert torch.allclose(lam.diff(), lam.diff().mean().expand(9), rtol=1e-9)
    assert float(ts[-2]) == pytest.approx(1e-3) and float(ts[-1]) == 0.0
    no_zero = grids.logsnr_grid(10, sch, t_min=1e-3, denoise_to_zero=False)
    assert no_zero.shape == (11,) and float(no_zero[-1]) == pytest.approx(1e-3)


def test_karras_grid_matches_rho_spacing():
    sch = EDM()
    ts = grids.karras_grid(8, sch, rho=7.0)
    sig = sch.noise_to_signal(ts[:-1])
    root = sig ** (1 / 7)
    assert torch.allclose(root.diff(), root.diff().mean().expand(7), rtol=1e-9)
    assert float(sig[0]) == pytest.approx(80.0) and float(sig[-1]) == pytest.approx(0.002)


def test_default_t_min_is_noise_level_0002():
    for sch in [VPLinear(), RectifiedFlow(), EDM()]:
        assert float(sch.noise_to_signal(grids.default_t_min(sch))) == pytest.approx(0.002, rel=1e-9)
    assert grids.default_t_min(ddpm_linear()) == pytest.approx(1e-3)  # clamped to the first training index


def test_shift_grid():
    ts = grids.uniform_grid(4)
    out = grids.shift_grid(ts, 3.0)
    assert torch.allclose(out, 3 * ts / (1 + 2 * ts))
    assert float(out[0]) == 1.0 and float(out[-1]) == 0.0 and (out >= ts).all()
    assert torch.allclose(grids.shift_grid(ts, 1.0), ts)


def test_quadratic_grid():
    ts = grids.quadratic_grid(4)
    assert torch.allclose(ts, torch.tensor([1.0, 0.5625, 0.25, 0.0625, 0.0], dtype=torch.float64))


def test_bad_grids_are_refused():
    with pytest.raises(ValueError, match="at least 2"):
        grids.check_grid([0.5])
    with pytest.raises(ValueError, match="decreasing"):
        grids.check_grid([0.2, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        grids.check_grid([1.5, 0.0])
    with pytest.raises(ValueError, match=">= 1"):
        grids.uniform_grid(0)
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        grids.logsnr_grid(5, RectifiedFlow(), t_max=1.0)
    with pytest.raises(ValueError, match="shift"):
        grids.shift_grid(grids.uniform_grid(3), -1.0)


def test_discrete_spacings():
    sch = ddpm_linear()
    idx = lambda ts: sch.index_from_t(ts[:-1]).round().long().tolist()  # noqa: E731
    assert idx(grids.discrete_grid(10, sch, "trailing")) == list(range(999, 0, -100))
    assert idx(grids.discrete_grid(10, sch, "leading", steps_offset=1)) == list(range(901, 0, -100))
    assert idx(grids.discrete_grid(10, sch, "linspace")) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    for spacing in grids.DISCRETE_SPACINGS:
        ts = grids.discrete_grid(7, sch, spacing)
        assert ts.shape == (8,) and float(ts[-1]) == 0.0
        assert torch.allclose(sch.index_from_t(ts[:-1]), sch.index_from_t(ts[:-1]).round(), atol=1e-9)
    with pytest.raises(ValueError, match="discrete-time"):
        grids.discrete_grid(5, VPLinear())
    with pytest.raises(ValueError, match="exceed"):
        grids.discrete_grid(2000, sch)
    with pytest.raises(ValueError, match="allowed"):
        grids.discrete_grid(5, sch, "middle")


def test_polyexponential_grid():
    sch = VPLinear()
    assert torch.allclose(grids.polyexponential_grid(7, sch, rho=1.0), grids.logsnr_grid(7, sch))
    ts = grids.polyexponential_grid(7, sch, rho=2.0)
    lam = sch.logsnr(ts[:-1])
    ramp = (lam[-1] - lam) / (lam[-1] - lam[0])            # (1 - u)^2 with u uniform
    assert torch.allclose(ramp.sqrt(), torch.linspace(1, 0, 7, dtype=torch.float64), atol=1e-9)


def test_user_grid_from_the_command_line_syntax():
    from sdeflow.registry import parse_grid

    assert torch.equal(parse_grid("1,0.5,0", 3, VPLinear()), torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="decreasing"):
        parse_grid("0,0.5,1", 3, VPLinear())
    with pytest.raises(ValueError, match="comma-separated"):
        parse_grid("1,a", 3, VPLinear())


def test_auto_grid_stops_earlier_with_fewer_steps():
    sch = EDM()
    lows = []
    for n in [3, 5, 8, 12, 20, 60]:
        ts = grids.auto_grid(n, sch)
        assert ts.shape == (n + 1,) and float(ts[-1]) == 0.0
        lows.append(float(sch.noise_to_signal(ts[-2])))
    assert lows == sorted(lows, reverse=True) and lows[0] == pytest.approx(0.2) and lows[-1] == pytest.approx(0.002)
    assert float(sch.noise_to_signal(grids.auto_grid(8, sch)[-2])) == pytest.approx(5 / 64)


GRID_FUNCTIONS = {
    "uniform": lambda n, s: grids.uniform_grid(n),
    "quadratic": lambda n, s: grids.quadratic_grid(n),
    "logsnr": grids.logsnr_grid,
    "karras": grids.karras_grid,
    "polyexponential": grids.polyexponential_grid,
    "auto": grids.auto_grid,
    "discrete": grids.discrete_grid,
    "shift": lambda n, s: grids.shift_grid(grids.auto_grid(n, s), 3.0),
}


@pytest.mark.parametrize("fn", sorted(GRID_FUNCTIONS))
@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_every_grid_function_works_with_every_schedule_or_says_why(schedule, fn, n):
    """Each public grid function, called with its defaults, returns a valid grid from the schedule's
    start to t = 0 with n steps, or refuses with a ValueError that names what it needs."""
    try:
        ts = GRID_FUNCTIONS[fn](n, schedule)
    except ValueError as e:
        assert fn == "discrete" and not hasattr(schedule, "num_steps") and "discrete" in str(e)
        return
    assert ts.numel() == n + 1 and float(ts[-1]) == 0.0
    assert float(ts[0]) <= 1.0 and bool(torch.isfinite(schedule.logsnr(ts[:1])).all()) or fn in ("uniform", "quadratic")
    assert (ts[1:] < ts[:-1]).all()

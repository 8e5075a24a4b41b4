import pytest
import torch

from sdeflow import grids
from sdeflow.cli.registry import GRIDS
from sdeflow.schedules import EDM, RectifiedFlow, VPLinear, ddpm_linear


@pytest.mark.parametrize("name", sorted(GRIDS))
@pytest.mark.parametrize("n", [1, 2, 3, 10, 57])
def test_registry_grids_are_valid(schedule, name, n):
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

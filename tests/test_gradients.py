"""Gradients through sampling: autograd through ``sample`` equals central finite differences."""

import pytest
import torch

from sdeflow import ModelDenoiser, grids, sample
from sdeflow.registry import SAMPLERS
from sdeflow.schedules import RectifiedFlow, VPLinear

DETERMINISTIC = sorted(n for n in SAMPLERS if not SAMPLERS[n]().stochastic and not SAMPLERS[n]().adaptive)


class Net(torch.nn.Module):
    """A small smooth network in float64: ``F(x, c) = W2 tanh(W1 x + b c) + x / 2``."""

    def __init__(self, dim=3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(0.5 * torch.randn(8, dim, generator=g, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(8, generator=g, dtype=torch.float64))
        self.w2 = torch.nn.Parameter(0.5 * torch.randn(dim, 8, generator=g, dtype=torch.float64))

    def forward(self, x, c):
        return torch.tanh(x @ self.w1.T + c[:, None] * self.b) @ self.w2.T + 0.5 * x


def _loss(name, sch, net, x):
    den = ModelDenoiser(net, sch, "x0")
    ts = grids.uniform_grid(5, t_max=0.98)
    return (sample(den, SAMPLERS[name](), ts, x).x ** 2).sum() + sample(den, SAMPLERS[name](), ts, x).x[:, 0].sum()


@pytest.mark.parametrize("name", DETERMINISTIC)
@pytest.mark.parametrize("sch", [VPLinear(), RectifiedFlow()], ids=["vp", "rf"])
def test_gradients_through_sampling_match_finite_differences(name, sch):
    """d loss / d x_init and d loss / d (network weights) by autograd, with the default options of
    ``sample`` (no callback), equal central differences (float64, step 1e-6)."""
    net = Net()
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss = _loss(name, sch, net, x)
    gx, gw = torch.autograd.grad(loss, [x, net.w1])
    eps = 1e-6
    with torch.no_grad():
        for idx in [(0, 0), (2, 1), (3, 2)]:
            for tensor, grad in [(x, gx), (net.w1, gw)]:
                old = tensor[idx].item()
                tensor[idx] = old + eps
                up = _loss(name, sch, net, x)
                tensor[idx] = old - eps
                down = _loss(name, sch, net, x)
                tensor[idx] = old
                fd = float(up - down) / (2 * eps)
                assert abs(float(grad[idx]) - fd) <= 1e-6 * (1 + abs(fd)), (idx, float(grad[idx]), fd)


def test_sampling_without_autograd_still_leaves_x_init_alone():
    net = Net()
    x = torch.randn(4, 3, dtype=torch.float64)
    before = x.clone()
    with torch.no_grad():
        for name in DETERMINISTIC:
            sample(ModelDenoiser(net, VPLinear(), "x0"), SAMPLERS[name](), grids.uniform_grid(4), x)
    assert torch.equal(x, before)

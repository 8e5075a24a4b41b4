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


def native(sch) -> str:
    """The parameterization the tests' network takes: a velocity on rectified flow (whose value on
    clean data rk4-at-data evaluates), x0 on VP."""
    return "velocity" if isinstance(sch, RectifiedFlow) else "x0"


def _loss(name, sch, net, x):
    den = ModelDenoiser(net, sch, native(sch))
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


class CondNet(Net):
    """``Net`` with a conditioning input: ``F(x, c, y) = W2 tanh(W1 x + b c + y u) + x / 2``."""

    def __init__(self, dim=3):
        super().__init__(dim)
        self.u = torch.nn.Parameter(torch.randn(8, generator=torch.Generator().manual_seed(5), dtype=torch.float64))

    def forward(self, x, c, y):
        return torch.tanh(x @ self.w1.T + c[:, None] * self.b + y[:, None] * self.u) @ self.w2.T + 0.5 * x


def _grads(name, sch, mode, noise=None, steps=7):
    net = CondNet()
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    y = torch.linspace(-1, 1, 4, dtype=torch.float64, requires_grad=True)
    out = sample(ModelDenoiser(net, sch, native(sch)), SAMPLERS[name](), grids.uniform_grid(steps, t_max=0.98), x,
                 cond={"y": y}, gradient=mode, noise=noise)
    loss = (out.x ** 2).sum() + out.x[:, 0].sum()
    return out.nfe, torch.autograd.grad(loss, [x, y] + list(net.parameters()))


@pytest.mark.parametrize("name", DETERMINISTIC)
@pytest.mark.parametrize("sch", [VPLinear(), RectifiedFlow()], ids=["vp", "rf"])
def test_checkpointed_gradients_equal_autograd(name, sch):
    """``gradient="checkpoint"`` (recomputed steps, log-many snapshots) gives the gradients of plain
    autograd through the same steps, for the initial state, a conditioning tensor and the weights."""
    nfe, plain = _grads(name, sch, "autograd")
    nfe_c, checkpointed = _grads(name, sch, "checkpoint")
    assert nfe_c == nfe
    for a, b in zip(plain, checkpointed):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12 * float(a.abs().max())), (a, b)


@pytest.mark.parametrize("name", ["ddim-eta1", "euler-maruyama", "sde-dpm-solver++-2m"])
def test_checkpointed_gradients_of_stochastic_samplers_for_a_fixed_noise_path(name):
    from sdeflow import SeededNoise

    seeds = [3, 1, 4, 1]
    plain = _grads(name, VPLinear(), "autograd", SeededNoise(seeds))[1]
    checkpointed = _grads(name, VPLinear(), "checkpoint", SeededNoise(seeds))[1]
    for a, b in zip(plain, checkpointed):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12 * float(a.abs().max()))
    with pytest.raises(ValueError, match="SeededNoise"):
        _grads(name, VPLinear(), "checkpoint")


REVERSIBLE = [n for n in DETERMINISTIC if SAMPLERS[n]().reversible]


@pytest.mark.parametrize("name", REVERSIBLE)
@pytest.mark.parametrize("sch", [VPLinear(), RectifiedFlow()], ids=["vp", "rf"])
def test_reversible_gradients_equal_autograd(name, sch):
    """``gradient="reversible"`` (inputs reconstructed backwards by undoing the steps; the final step
    to t = 0, which cannot be undone, kept) gives plain autograd's gradients to round-off."""
    nfe, plain = _grads(name, sch, "autograd")
    nfe_r, reversed_ = _grads(name, sch, "reversible")
    assert nfe_r == nfe
    for a, b in zip(plain, reversed_):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11 * float(a.abs().max())), (a, b)


def test_checkpoint_refuses_what_it_cannot_recompute():
    x = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    den = ModelDenoiser(Net(), VPLinear(), "x0")
    with pytest.raises(ValueError, match="fixed-grid"):
        sample(den, SAMPLERS["rk45"](), grids.uniform_grid(4), x, gradient="checkpoint")
    with pytest.raises(ValueError, match="trajectory"):
        sample(den, SAMPLERS["ddim"](), grids.uniform_grid(4), x, gradient="checkpoint", return_trajectory=True)
    with pytest.raises(ValueError, match="gradient must be"):
        sample(den, SAMPLERS["ddim"](), grids.uniform_grid(4), x, gradient="adjoint")
    with pytest.raises(ValueError, match="reversible sampler"):
        sample(den, SAMPLERS["ddim"](), grids.uniform_grid(4), x, gradient="reversible")


def test_jacobian_of_the_sampling_map_converges_to_the_exact_flow_maps():
    """For one Gaussian the probability-flow map is linear; the Jacobian of the sampling map from the
    noise, by checkpointed gradients, converges to it at the sampler's order."""
    from sdeflow import analytic

    from test_convergence import fitted_order

    g = analytic.random_mixture(4, 1, structure="full", seed=3)
    sch = VPLinear()
    eye = torch.eye(4, dtype=torch.float64)
    t_min = 0.01
    exact = g.flow_map(eye, sch, 1.0, t_min) - g.flow_map(torch.zeros(1, 4, dtype=torch.float64), sch, 1.0, t_min)
    steps, errs = [8, 16, 32, 64], []
    for n in steps:
        x = torch.zeros(4, 4, dtype=torch.float64, requires_grad=True)
        out = sample(g.denoiser(sch), SAMPLERS["dpm-solver++-2m"](), grids.logsnr_grid(n, sch, t_min=t_min, denoise_to_zero=False), x,
                     gradient="checkpoint").x
        # row i of the (linear) map's matrix: d out[i] / d x[i] with sample i's rows independent
        jac = torch.stack([torch.autograd.grad(out[:, j].sum(), x, retain_graph=True)[0][j] for j in range(4)])
        errs.append(float((jac.T - exact).abs().max()))
    assert abs(fitted_order(steps, errs) - 2) <= 0.3, errs


@pytest.mark.slow
@pytest.mark.parametrize("name, mode", [("dpm-solver++-2m", "checkpoint"), ("bdia", "reversible")])
def test_gradient_memory_does_not_grow_with_the_steps(name, mode):
    """Peak tensor memory of sampling plus backward: flat within 10% from 10 to 1000 steps with
    checkpointing or reversible reconstruction, while plain autograd grows with the steps."""
    from sdeflow.profiling import PeakMemory

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 512), torch.nn.SiLU(), torch.nn.Linear(512, 512), torch.nn.SiLU(),
                              torch.nn.Linear(512, 2))
    den = ModelDenoiser(lambda x, t: mlp(torch.cat([x, t[:, None]], 1)), VPLinear(), "eps")
    x0 = torch.randn(64, 2)

    def peak(n, mode):
        ts = grids.uniform_grid(n, t_min=1e-3)
        with torch.no_grad():  # fill the denoiser's per-time input cache outside the measurement
            sample(den, SAMPLERS[name](), ts, x0)
        x = x0.clone().requires_grad_()
        with PeakMemory() as m:
            sample(den, SAMPLERS[name](), ts, x, gradient=mode).x.pow(2).sum().backward()
        return m.peak

    flat = [peak(n, mode) for n in [10, 100, 1000]]
    assert max(flat) <= 1.1 * min(flat), flat
    plain = [peak(n, "autograd") for n in [10, 100]]
    assert plain[1] > 5 * plain[0] and plain[0] > flat[0], (plain, flat)


@pytest.mark.parametrize("mode", ["checkpoint", "autograd"])
def test_a_tensor_a_plain_function_network_captures_gets_its_gradient(mode):
    """A network written as a function of a tensor it closes over (no nn.Module): the recomputing backward
    finds that tensor and gives it autograd's gradient, to round-off (float64)."""
    import sdeflow as sf

    w = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    den = sf.ModelDenoiser(lambda x, c: torch.tanh(x @ w), VPLinear(), "eps")
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = []
    for how in ("autograd", mode):
        out = sf.sample(den, sf.samplers.DPMSolverPP(), sf.uniform_grid(6), x, gradient=how).x
        grads.append(torch.autograd.grad(out.pow(2).sum(), w)[0])
    assert float(grads[0].abs().max()) > 0
    assert torch.allclose(grads[1], grads[0], rtol=1e-12, atol=0)


def test_a_large_differentiable_run_warns_of_nothing(recwarn):
    """The finiteness spot check reads a detached view: more than 8192 values under autograd are quiet."""
    import sdeflow as sf

    net = torch.nn.Linear(4, 4)
    den = sf.ModelDenoiser(lambda x, c: net(x), VPLinear(), "eps")
    out = sf.sample(den, sf.samplers.DDIM(), sf.uniform_grid(3), torch.randn(3000, 4)).x
    out.sum().backward()
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]

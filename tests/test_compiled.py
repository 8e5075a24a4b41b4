"""The fixed-grid program (sdeflow.compiled) against the sampling loop, and what torch.compile makes
of it: the same samples, one traced graph for every grid of one length, no recompiles per step for
a compiled network."""

import shutil

import pytest
import torch
import torch._dynamo as dynamo
from torch._dynamo.utils import counters

from sdeflow import BrownianTreeNoise, SeededNoise, analytic, grids, guidance, sample
from sdeflow.compiled import FixedGridLoop
from sdeflow.denoisers import ModelDenoiser
from sdeflow.registry import SAMPLERS
from sdeflow.sampling import planned
from sdeflow.schedules import EDM, RectifiedFlow, VPLinear, ddpm_linear

STATIC = sorted(n for n, make in SAMPLERS.items() if make().linear_plan and not make().adaptive)


class Net(torch.nn.Module):
    """A small random network ``(x, c) -> F`` on 2-D states."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2)).to(dtype)

    def forward(self, x, c):
        return self.body(torch.cat([x, torch.tanh(c.to(x.dtype)[:, None] / 1000)], 1))


CASES = {"vp-eps": (VPLinear(), "eps", "t"), "ddpm-index-v": (ddpm_linear(), "v", "index"),
         "rf-velocity": (RectifiedFlow(), "velocity", "t"), "edm-x0": (EDM(), "x0", "edm")}


def grid(sch, n, kind=0):
    if kind == 1:
        return grids.karras_grid(n, sch) if not isinstance(sch, RectifiedFlow) else grids.shift_grid(grids.uniform_grid(n), 3.0)
    if isinstance(sch, EDM):
        return grids.karras_grid(n, sch, rho=3.0 + kind)
    if hasattr(sch, "num_steps"):
        return grids.discrete_grid(n, sch, ["trailing", "leading", "linspace"][kind % 3])
    return grids.logsnr_grid(n, sch, t_max=0.999) if kind == 0 else grids.uniform_grid(n, t_max=0.999)


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", STATIC)
def test_fixed_grid_program_equals_the_sampling_loop(name, case):
    """Every engine-built sampler, run as a program of tensors, gives sdeflow.sample's samples (float64)."""
    sch, param, time_input = CASES[case]
    den = ModelDenoiser(Net(torch.float64), sch, param, time_input=time_input)
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loop = FixedGridLoop(den, SAMPLERS[name](), 7, noise=SeededNoise(range(6)))
    with torch.no_grad():
        for kind in (0, 1):
            ts = grid(sch, 7, kind)
            if any(not den.has_ode_velocity(t) for t in planned(SAMPLERS[name](), sch, ts).velocity_times()):
                # a stage on clean data that an x0 network cannot answer: both refuse before any evaluation
                for run in (lambda: loop(x, ts), lambda: sample(den, SAMPLERS[name](), ts, x)):
                    with pytest.raises(ValueError, match="clean data"):
                        run()
                continue
            ref = sample(den, SAMPLERS[name](), ts, x, noise=SeededNoise(range(6)))
            out = loop(x, ts)
            assert rel(out.x, ref.x) < 1e-11
            assert out.nfe == ref.nfe


@pytest.mark.parametrize("name", ["ddpm", "sde-dpm-solver++-2m"])
def test_generator_noise_is_drawn_as_the_sampling_loop_draws_it(name):
    """No extra draws: with generators seeded alike, the program and the loop see the same noise."""
    from sdeflow import GeneratorNoise

    sch = VPLinear()
    den = ModelDenoiser(Net(torch.float64), sch, "eps")
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ts = grids.logsnr_grid(6, sch)
    loop = FixedGridLoop(den, SAMPLERS[name](), 6, noise=GeneratorNoise(torch.Generator().manual_seed(9)))
    with torch.no_grad():
        ref = sample(den, SAMPLERS[name](), ts, x, noise=GeneratorNoise(torch.Generator().manual_seed(9))).x
        assert rel(loop(x, ts).x, ref) < 1e-11


def traced_graphs():
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("name", ["ddim", "dpm-solver++-3m", "unipc-bh2", "heun", "sde-dpm-solver++-2m", "deis-3"])
def test_compiled_program_is_traced_once_for_grids_of_one_length(name):
    """fullgraph=True and zero recompiles across four different grids of equal length."""
    sch = VPLinear()
    den = ModelDenoiser(Net(), sch, "eps")
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(2))
    loop = FixedGridLoop(den, SAMPLERS[name](), 6, noise=SeededNoise(range(8))).compile(backend="eager")
    dynamo.reset()
    counters.clear()
    with torch.no_grad():
        for ts in [grids.logsnr_grid(6, sch), grids.uniform_grid(6), grids.karras_grid(6, sch), grids.quadratic_grid(6)]:
            ref = sample(den, SAMPLERS[name](), ts, x, noise=SeededNoise(range(8))).x
            assert rel(loop(x, ts).x, ref) < 1e-5
    assert traced_graphs() == 1 and loop.programs == 1


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="inductor needs a C++ compiler")
def test_inductor_program_on_the_cpu():
    sch = ddpm_linear()
    den = ModelDenoiser(Net(), sch, "eps", time_input="index")
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(3))
    loop = FixedGridLoop(den, SAMPLERS["dpm-solver++-2m"](), 5).compile()
    dynamo.reset()
    counters.clear()
    with torch.no_grad():
        for spacing in ("trailing", "linspace"):
            ts = grids.discrete_grid(5, sch, spacing)
            assert rel(loop(x, ts).x, sample(den, SAMPLERS["dpm-solver++-2m"](), ts, x).x) < 1e-5
    assert traced_graphs() == 1


def test_a_compiled_network_is_not_recompiled_per_step():
    """Times reach the network as tensors: one graph for every step, sampler and grid length."""
    sch = VPLinear()
    net = torch.compile(Net(), backend="eager")
    den = ModelDenoiser(net, sch, "eps")
    x = torch.randn(4, 2)
    dynamo.reset()
    counters.clear()
    with torch.no_grad():
        for n in (4, 7):
            for name in ("dpm-solver++-2m", "unipc-bh2", "heun", "ddpm"):
                sample(den, SAMPLERS[name](), grids.logsnr_grid(n, sch), x, noise=SeededNoise(range(4)))
    assert traced_graphs() == 1


def test_a_general_denoiser_traces_with_tensor_times():
    """The exact mixture denoiser is called with 0-d tensor times and traces as one graph too."""
    mix = analytic.ring_2d()
    sch = VPLinear()
    den = mix.denoiser(sch)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(4))
    loop = FixedGridLoop(den, SAMPLERS["dpm-solver++-2m"](), 5).compile(backend="eager")
    dynamo.reset()
    counters.clear()
    for ts in [grids.logsnr_grid(5, sch), grids.uniform_grid(5, t_max=0.99)]:
        assert rel(loop(x, ts).x, sample(den, SAMPLERS["dpm-solver++-2m"](), ts, x).x) < 1e-5
    assert traced_graphs() == 1


def test_what_cannot_run_as_a_program_is_refused():
    sch = VPLinear()
    den = ModelDenoiser(Net(), sch, "eps")
    for name in ("rk45", "dpm-solver-12", "restart", "pc-langevin", "edm-churn"):
        with pytest.raises(ValueError, match="fixed-grid program"):
            FixedGridLoop(den, SAMPLERS[name](), 5)
    with pytest.raises(ValueError, match="Brownian"):
        FixedGridLoop(den, SAMPLERS["ddpm"](), 5, noise=BrownianTreeNoise([1]))
    with pytest.raises(ValueError, match="steps"):
        FixedGridLoop(den, SAMPLERS["ddim"](), 0)
    loop = FixedGridLoop(den, SAMPLERS["ddim"](), 5)
    with pytest.raises(ValueError, match="6 times"):
        loop(torch.zeros(2, 2), grids.logsnr_grid(4, sch))
    with pytest.raises(ValueError, match="CUDA device"):
        loop.cuda_graph(torch.zeros(2, 2), grids.logsnr_grid(5, sch))
    with pytest.raises(ValueError, match="captures CUDA graphs itself"):
        FixedGridLoop(den, SAMPLERS["ddim"](), 5).compile(mode="reduce-overhead").cuda_graph(
            torch.zeros(2, 2), grids.logsnr_grid(5, sch))
    mix = analytic.ring_2d(n_classes=4)
    guided = guidance.Guided(mix.denoiser(sch), 2.0)
    traced = FixedGridLoop(guided, SAMPLERS["ddim"](), 4, cond={"label": torch.zeros(2, dtype=torch.long)})
    traced.compile(backend="eager")
    with pytest.raises(TypeError, match="could not be traced as one program"):
        traced(torch.zeros(2, 2), grids.logsnr_grid(4, sch))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replays_new_inputs_and_grids():
    sch = VPLinear()
    den = ModelDenoiser(Net().cuda(), sch, "eps")
    x = torch.randn(8, 2, device="cuda")
    loop = FixedGridLoop(den, SAMPLERS["dpm-solver++-2m"](), 6, noise=SeededNoise(range(8)))
    graphed = loop.cuda_graph(x, grids.logsnr_grid(6, sch))
    with torch.no_grad():
        for ts in [grids.logsnr_grid(6, sch), grids.uniform_grid(6)]:
            for x_in in (x, 2 * x):
                ref = sample(den, SAMPLERS["dpm-solver++-2m"](), ts, x_in, noise=SeededNoise(range(8))).x
                assert rel(graphed(x_in, ts).x, ref) < 1e-5

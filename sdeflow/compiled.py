"""The fixed-grid sampling loop as a function of tensors only: compile it, or capture it as one CUDA graph.

:func:`sdeflow.sample` keeps every coefficient of a grid as a Python float, which is the fastest
eager loop but would make ``torch.compile`` specialise on the grid. :class:`FixedGridLoop` runs the
same step rules with the grid's numbers packed into one float64 tensor on the sampling device:

- every per-step coefficient of the plan except the structural zeros (which decide what a step
  computes) becomes an entry of that tensor, and so does every evaluation time;
- a :class:`~sdeflow.denoisers.ModelDenoiser`'s input scale, skip and output factors and the network's
  time input are precomputed per evaluation (in float64, as the eager loop does) and packed too, so
  the loop body is the network plus fused multiply-adds and reaches no schedule code.

Grids of the same length (with the same structure: a step that needs a fallback at an infinite
logSNR, say, has a different one) then share one traced program: ``compile()`` gives a
``fullgraph`` program that never recompiles for a new grid, and :meth:`FixedGridLoop.cuda_graph`
captures the whole loop once and replays it with new inputs and grids.

Supported samplers: those built on the three linear engines (:class:`~sdeflow.samplers.sde.AffineStep`,
:class:`~sdeflow.samplers.engine.Multistep`, :class:`~sdeflow.samplers.engine.SingleStep`): DDIM,
DDPM, Euler, Euler-Maruyama, Euler ancestral, DPM-Solver(++) single and multistep and their SDE
variants, UniPC, DEIS, iPNDM, Heun, EDM's Heun. Noise: :class:`~sdeflow.noise.SeededNoise` (generated
on the device inside the program) or the global generator; a Brownian tree needs the eager loop.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from .denoisers import Denoiser, ModelDenoiser, checked_output
from .noise import BrownianTreeNoise, GeneratorNoise, NoiseSource
from .run import NonFiniteError, SampleResult
from .sampling import check_models, check_ode_velocity, planned
from .samplers.base import Plan, Sampler, is_number, map_numbers
from .shapes import check_batch


@dataclasses.dataclass(frozen=True)
class _Slot:
    """Entry ``k`` of the packed coefficient tensor."""

    k: int


def pack_numbers(tree, values: list[float]):
    """``tree`` with every nonzero float replaced by a :class:`_Slot` (its value appended to ``values``),
    by :func:`~sdeflow.samplers.base.map_numbers`. Zeros stay: a zero coefficient means a term a step
    does not compute (no noise for an ODE step, no history for a first step), which is structure; every
    other number, a 1 included, is data, so grids that start at t = 1 or below it share one program."""
    def slot(v):
        if is_number(v):
            values.append(v)
            return _Slot(len(values) - 1)
        if v is not None and not isinstance(v, (bool, int, float, str)):
            raise TypeError(f"cannot pack a plan entry of type {type(v).__name__}")
        return v
    return map_numbers(tree, slot)


def unpack_numbers(tree, entries):
    """The inverse of :func:`pack_numbers`, with slot ``k`` read from ``entries[k]``."""
    return map_numbers(tree, lambda v: entries[v.k] if isinstance(v, _Slot) else v)


class _Recorder:
    """A field that records the times it is called at (the dry run that fixes the evaluation order)."""

    def __init__(self):
        self.times: list[float] = []
        self.velocity: list[bool] = []  # whether each call asks for the model's velocity (a stage on clean data)

    def __call__(self, x, t):
        self.times.append(float(t))
        self.velocity.append(False)
        return torch.zeros_like(x)

    def ode_velocity(self, x, t):
        self(x, t)
        self.velocity[-1] = True
        return torch.zeros_like(x)


@dataclasses.dataclass
class _Program:
    """One packed grid: its structure (what is traced) and its numbers (what is fed)."""

    key: str
    plan: Plan            # the plan with slots in place of numbers
    values: torch.Tensor  # float64, on the CPU: [plan slots | per-call (scale, skip, out, c)]
    n_slots: int
    n_calls: int
    on: dict = dataclasses.field(default_factory=dict)  # the values copied to each device, once

    def values_on(self, device) -> torch.Tensor:
        key = str(device)
        if key not in self.on:
            self.on[key] = self.values.to(device)
        return self.on[key]


class _StaticField:
    """``field(x, t)`` inside the program: evaluation ``m`` of the run uses row ``m`` of the packed
    denoiser factors (a :class:`ModelDenoiser`), or calls a general denoiser with a tensor time."""

    def __init__(self, denoiser: Denoiser, factors, cond: dict, network=None):
        self.denoiser, self.factors, self.cond, self.calls = denoiser, factors, cond, 0
        self.network = network

    def __call__(self, x, t, velocity: bool = False):
        m, self.calls = self.calls, self.calls + 1
        den = self.denoiser
        if self.factors is None:
            return den.ode_velocity(x, t, **self.cond) if velocity else den(x, t, **self.cond)
        scale, skip, out, c = self.factors[m]  # for a velocity call: the field's (c_x, c_F) in place of (skip, out)
        f = checked_output(self.network((x * scale).to(den.network_dtype(x)), c.to(den.time_dtype(x)).expand(x.shape[0]),
                                        **self.cond), x)
        return x * skip + f.to(x.dtype) * out

    def ode_velocity(self, x, t):
        return self(x, t, velocity=True)


class FixedGridLoop:
    """``loop(x_init, ts)``: :func:`sdeflow.sample` on a fixed grid of ``steps + 1`` times, as a program
    of tensors (see the module docstring).

    Args:
        denoiser: a :class:`~sdeflow.denoisers.Denoiser`; a :class:`~sdeflow.denoisers.ModelDenoiser`'s
            factors are precomputed per evaluation (other denoisers are called with a 0-d tensor time
            and must be traceable themselves to be compiled).
        sampler: a fixed-grid sampler built on one of the linear engines.
        steps: the number of steps every grid has.
        cond: conditioning passed to every evaluation (fixed for the loop; tensors are inputs).
        noise: :class:`~sdeflow.noise.SeededNoise` or :class:`~sdeflow.noise.GeneratorNoise` for
            stochastic samplers (default: the global generator).

    ``loop.compile(**kwargs)`` replaces the program by ``torch.compile(program, fullgraph=True, **kwargs)``;
    ``loop.cuda_graph(x_init, ts)`` captures it on a CUDA device. ``loop.programs`` counts the distinct
    structures traced so far (one for grids of one length, as a rule).
    """

    def __init__(self, denoiser: Denoiser, sampler: Sampler, steps: int, *, cond: dict | None = None,
                 noise: NoiseSource | None = None):
        check_models(denoiser, sampler)
        if not sampler.linear_plan or sampler.adaptive:
            raise ValueError(f"{type(sampler).__name__} cannot run as a fixed-grid program: supported are the samplers "
                             "built on the AffineStep, Multistep and SingleStep engines (DDIM, DDPM, Euler, "
                             "DPM-Solver(++), UniPC, DEIS, iPNDM, Heun, ...); use sdeflow.sample for the others")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if isinstance(noise, BrownianTreeNoise):
            raise ValueError("a Brownian tree is queried at grid times on the host: use sdeflow.sample with it, "
                             "or SeededNoise in a fixed-grid program")
        if noise is not None and not isinstance(noise, NoiseSource):
            raise TypeError(f"noise must be a sdeflow NoiseSource, got {type(noise).__name__}")
        self.denoiser, self.sampler, self.steps = denoiser, sampler, steps
        self.cond, self.noise = dict(cond or {}), noise or GeneratorNoise()
        self._programs: dict[str, _Program] = {}
        self._compile: dict | None = None
        self._fns: dict[str, Callable] = {}
        model = getattr(denoiser, "model", None)

        def network(x, c, **cond):
            return model(x, c, **cond)

        # One nested compile region: the network is traced and compiled once, not once per step of the
        # unrolled loop. Hierarchical compilation is young in PyTorch: where it fails on a network, the
        # loop falls back to inlining every step (see __call__).
        self._plain_network = network
        self._network = torch.compiler.nested_compile_region(network)

    @property
    def programs(self) -> int:
        return len(self._fns)

    def compile(self, **kwargs) -> "FixedGridLoop":
        """Run through ``torch.compile(..., fullgraph=True, **kwargs)`` from now on (``fullgraph`` can
        be overridden); returns ``self``."""
        self._compile = {"fullgraph": True, **kwargs}
        self._fns.clear()
        return self

    # ---------------------------------------------------------------------------------- packing
    def pack(self, ts) -> _Program:
        """The grid's structure and numbers (planned in float64, as :func:`sdeflow.sample` plans it)."""
        plan = planned(self.sampler, self.denoiser.schedule, ts)
        check_ode_velocity(self.denoiser, self.sampler, plan)
        if len(plan.t) != self.steps:
            raise ValueError(f"this loop takes grids of {self.steps + 1} times ({self.steps} steps), got {len(plan.t) + 1}")
        values: list[float] = []
        packed = pack_numbers((plan.t, plan.s, plan.coef), values)
        n_slots = len(values)
        recorder = _Recorder()
        self._steps(recorder, torch.zeros(1, 1, dtype=torch.float64), plan, lambda i: (lambda draw=0, span=None: 0.0))
        factors = []
        if type(self.denoiser) is ModelDenoiser:
            for t, velocity in zip(recorder.times, recorder.velocity):
                scale, skip, out, c = self.denoiser.coefficients(t)
                if velocity:
                    skip, out = (float(v) for v in self.denoiser.velocity_coefficients(t))
                factors.extend((scale, skip, out, c))
        key = repr((packed, plan.history, plan.velocity_at, plan.nfe, len(recorder.times)))
        slotted = dataclasses.replace(plan, t=packed[0], s=packed[1], coef=packed[2], ts=None, inplace=False)
        return _Program(key, slotted, torch.tensor(values + factors, dtype=torch.float64), n_slots,
                        len(recorder.times))

    def _steps(self, field, x, plan: Plan, noise_at: Callable[[int], Any]):
        state = self.sampler.init_state(x, plan)
        for i in range(len(plan.t)):
            x, state = self.sampler.step(field, x, i, plan, state, noise_at(i))
        return x

    def _program(self, prog: _Program) -> Callable:
        """The function ``(x, values) -> x`` of one structure (compiled when asked)."""
        fn = self._fns.get(prog.key)
        if fn is None:
            plan, n_slots, n_calls = prog.plan, prog.n_slots, prog.n_calls
            model_factors = type(self.denoiser) is ModelDenoiser

            def run(x, values, cond):
                entries = values[:n_slots].unbind(0)
                p = dataclasses.replace(plan, t=unpack_numbers(plan.t, entries), s=unpack_numbers(plan.s, entries),
                                        coef=unpack_numbers(plan.coef, entries))
                factors = values[n_slots:].view(n_calls, 4).unbind(0) if model_factors else None
                field = _StaticField(self.denoiser, factors, cond, self._network)

                def noise_at(i):
                    return lambda draw=0, span=None: self.noise(x, i, draw, None)

                return self._steps(field, x, p, noise_at)

            fn = torch.compile(run, **self._compile) if self._compile is not None else run
            self._fns[prog.key] = fn
        return fn

    # ---------------------------------------------------------------------------------- running
    def __call__(self, x_init: torch.Tensor, ts) -> SampleResult:
        """Sample from ``x_init`` along ``ts``; the same result as :func:`sdeflow.sample` to float rounding."""
        check_batch(x_init, "x_init")
        prog = self._packed(ts)
        self.noise.prepare(x_init)  # the source's device tables, built outside the program
        values = prog.values_on(x_init.device)
        if self._compile is None:
            x = self._program(prog)(x_init, values, self.cond)
        else:
            try:
                x = self._traced(prog, x_init, values)
            except Exception as err:
                if not _trace_failure(err):
                    raise
                raise TypeError(
                    f"the loop with {type(self.denoiser).__name__} could not be traced as one program "
                    f"({type(err).__name__}: {str(err).splitlines()[0]}). A ModelDenoiser is packed and always "
                    "traces; for other denoisers (guidance with its per-step decisions, say) compile the network "
                    "instead, torch.compile(net), and sample with sdeflow.sample: it does not recompile per step") from err
        _check_finite(x)
        return SampleResult(x, prog.plan.nfe, _as_grid(ts))

    def _traced(self, prog: _Program, x_init, values):
        """Run the compiled program; if tracing fails inside the network's nested compile region,
        trace again with the network inlined."""
        try:
            return self._program(prog)(x_init, values, self.cond)
        except Exception as err:
            if self._network is self._plain_network or not _trace_failure(err):
                raise
            self._network = self._plain_network
            self._fns.clear()
            return self._program(prog)(x_init, values, self.cond)

    def _packed(self, ts) -> _Program:
        """:meth:`pack`, cached per grid (sampling many batches on one grid packs it once)."""
        key = tuple(_as_grid(ts).tolist())
        prog = self._programs.get(key)
        if prog is None:
            if len(self._programs) > 64:
                self._programs.clear()
            prog = self._programs[key] = self.pack(ts)
        return prog

    def cuda_graph(self, x_init: torch.Tensor, ts, *, warmup: int = 2) -> "GraphedLoop":
        """Capture the loop for ``x_init``'s shape on its CUDA device (after ``warmup`` eager runs on a
        side stream); the returned :class:`GraphedLoop` replays it for new inputs and grids of the
        same structure."""
        mode = (self._compile or {}).get("mode") or ""
        if mode in ("reduce-overhead", "max-autotune"):
            raise ValueError(f"compile mode {mode!r} captures CUDA graphs itself: use it without cuda_graph(), or "
                             "capture with mode='default' or 'max-autotune-no-cudagraphs'")
        if x_init.device.type != "cuda":
            raise ValueError(f"CUDA graph capture needs a state on a CUDA device, got {x_init.device}")
        if isinstance(self.noise, GeneratorNoise) and self.noise.generator is not None:
            raise ValueError("a captured loop draws from the device's default generator: pass no generator, "
                             "or SeededNoise")
        prog = self._packed(ts)
        self.noise.prepare(x_init)
        fn = self._program(prog)
        static_x, static_v = x_init.clone(), prog.values.to(x_init.device)  # the graph's own input buffer
        stream = torch.cuda.Stream(device=x_init.device)
        stream.wait_stream(torch.cuda.current_stream(x_init.device))
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(warmup):
                fn(static_x, static_v, self.cond)
        torch.cuda.current_stream(x_init.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            static_out = fn(static_x, static_v, self.cond)
        return GraphedLoop(self, prog.key, graph, static_x, static_v, static_out, prog.plan.nfe)


class GraphedLoop:
    """A :class:`FixedGridLoop` captured as one CUDA graph: ``graphed(x_init, ts)`` copies the inputs into
    the captured buffers, replays, and returns a :class:`~sdeflow.sampling.SampleResult` whose ``x`` is a
    copy (the buffer is overwritten by the next replay)."""

    def __init__(self, loop: FixedGridLoop, key: str, graph, static_x, static_v, static_out, nfe):
        self.loop, self.key, self.graph = loop, key, graph
        self.static_x, self.static_v, self.static_out, self.nfe = static_x, static_v, static_out, nfe

    def __call__(self, x_init: torch.Tensor, ts) -> SampleResult:
        if x_init.shape != self.static_x.shape or x_init.dtype != self.static_x.dtype:
            raise ValueError(f"this graph was captured for states of shape {tuple(self.static_x.shape)} and "
                             f"{self.static_x.dtype}, got {tuple(x_init.shape)} and {x_init.dtype}")
        prog = self.loop._packed(ts)
        if prog.key != self.key:
            raise ValueError("this grid has another structure than the captured one (another length, or a step "
                             "that takes a different fallback): capture a graph for it")
        self.static_x.copy_(x_init)
        self.static_v.copy_(prog.values)
        self.graph.replay()
        x = self.static_out.clone()
        _check_finite(x)
        return SampleResult(x, self.nfe, _as_grid(ts))


def _trace_failure(err: Exception) -> bool:
    """Whether ``err`` is Dynamo failing to trace (its errors carry the user frames it was tracing),
    not an error of the run itself."""
    return isinstance(err, torch._dynamo.exc.TorchDynamoException) or "from user code:" in str(err)


def _as_grid(ts) -> torch.Tensor:
    return torch.as_tensor(ts, dtype=torch.float64).flatten()


def _check_finite(x: torch.Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError("the samples contain NaN or Inf: a model output was not finite at some step "
                             "(run sdeflow.sample with check_finite='full' to find the step)")

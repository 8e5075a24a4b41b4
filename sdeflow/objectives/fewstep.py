"""Losses of few-step models: flow maps (MeanFlow, shortcut, consistency) and progressive distillation.

Every flow map is written ``X(x_t, t, s) = a x_t + b D(x_t, t, s)`` with ``a = sigma_s / sigma_t``,
``b = alpha_s - alpha_t a`` and ``D = skip(t) x_t + out(t) F`` the network output ``F`` in the
model's parameterization (:mod:`sdeflow.denoisers.flow_map`); so ``X = A x_t + B F`` with
``A = a + b skip``, ``B = b out``. Errors are measured in the network's output space, like the
``output`` weighting of :class:`~sdeflow.training.DenoisingLoss` (for rectified flow with a velocity
network, ``F`` is the average velocity over ``[s, t]``). With ``x_t = alpha_t x + sigma_t eps``:

- :class:`MeanFlowLoss`: the flow map is constant along trajectories, ``d/dt X(x_t, t, s) = 0``.
  With the total derivative ``dX/dt = A' x_t + A v + B' F + B dF/dt`` (one Jacobian-vector product
  with tangent ``(v, 1)``), the target is ``F* = sg(F - (dX/dt) / B')``; ``v`` is the conditional
  velocity ``alpha' x + sigma' eps`` (or a teacher's). At ``s = t`` it is flow matching. Adaptive
  weight ``1 / (sg(err) + c)^p``. Geng et al., "Mean Flows for One-step Generative Modeling", 2025,
  arXiv:2505.13447.
- :class:`ShortcutLoss`: self-consistency in the step size, ``X(x_t, t, s) = X(X(x_t, t, m), m, s)``
  at the midpoint ``m``, with stop-gradient targets and no Jacobian-vector product, for the steps
  ``t - s = 2^-k`` of the uniform grids (those the sampler takes); the finest level takes its two
  halves as instantaneous (DDIM) steps; the rest of the batch is flow matching.
  Frans et al., "One Step Diffusion via Shortcut Models", 2024, arXiv:2410.12557.
- :class:`ConsistencyLoss`: ``D(x_t, t, 0) = D(x_u, u, 0)`` for adjacent times ``u < t`` of a
  discretisation refined during the run (``N`` doubles from 10 to 1280 for training, from 10 to 160
  for distillation, whose second-order teacher steps need no finer grid; the improved schedule's
  times drawn with log-normal weights over the noise levels, pseudo-Huber distance, weight
  ``1 / (sigma_t - sigma_u)``, the student itself as stop-gradient target). Without a teacher ``x_u``
  shares the noise of ``x_t`` (consistency training); with one, ``x_u`` is a teacher ODE step
  (second-order, consistency distillation). Song et al., "Consistency Models", 2023,
  arXiv:2303.01469; Song, Dhariwal, "Improved Techniques for Training Consistency Models", 2023,
  arXiv:2310.14189.
- :class:`ProgressiveDistillationLoss`: a plain denoiser whose single DDIM step from ``t`` to ``s``
  lands where the teacher's two DDIM steps land, on an ``N``-step uniform grid. Salimans, Ho,
  "Progressive Distillation for Fast Sampling of Diffusion Models", 2022, arXiv:2202.00512.

Each loss is ``loss(model, x, cond=, t=, eps=, extra=, step=) -> (B,)``; ``t`` and ``eps`` come from
the time density, ``extra`` is ``(B, k)`` float64 of further per-sample randomness the trainer draws
with :meth:`extra` (uniforms in [0, 1), or second times), ``step`` the training step.
"""

from __future__ import annotations

import math

import torch

from ..denoisers import Denoiser, FlowMap, ModelDenoiser
from ..denoisers.flow_map import jump_coefficients
from ..samplers.base import ode_coefficients
from ..schedules import Schedule
from ..shapes import expand_as_batch
from .densities import T_HI, T_LO, TimeDensity, as_density


def _cast(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return expand_as_batch(c.to(device=x.device, dtype=x.dtype), x)


def _skip_out(model: Denoiser, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(skip, out)`` of the model's parameterization (``(0, 1)``, the data itself, for other models)."""
    if isinstance(model, ModelDenoiser):
        return model.parameterization.coefficients(model.schedule, t)
    return torch.zeros_like(t), torch.ones_like(t)


def _output(model: Denoiser, d: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The network output ``F = (D - skip x_t) / out`` of a model output ``D`` in data space."""
    skip, out = _skip_out(model, t)
    return (d - _cast(skip, x_t) * x_t) / _cast(out, x_t)


def _step(schedule: Schedule, x: torch.Tensor, d: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """One DDIM step ``a(t, s) x + b(t, s) d`` with per-sample times (the form of every jump)."""
    a, b = jump_coefficients(schedule, t, s)
    return _cast(a, x) * x + _cast(b, x) * d


def _smooth_jump(schedule: Schedule, t: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` without the exact ``s = t`` case of :func:`jump_coefficients`, so that their
    derivatives in ``t`` are right at ``s = t`` too (needs ``sigma_t > 0``)."""
    a = schedule.sigma(s) / schedule.sigma(t)
    return a, schedule.alpha(s) - schedule.alpha(t) * a


def _grid_step(n: torch.Tensor | int, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t, s)``: a step ``(1 - i / n, 1 - (i + 1) / n)`` of the ``n``-step uniform grid, the
    step ``i = floor(u n)`` for ``u`` uniform in [0, 1) (float64; ``n`` may vary per sample)."""
    n = torch.as_tensor(n, dtype=torch.float64)
    t = 1.0 - torch.minimum(torch.floor(u * n), n - 1) / n
    return t, t - 1.0 / n


def _rows(cond: dict, idx: torch.Tensor) -> dict:
    """The conditioning of the batch rows ``idx`` (per-sample tensors indexed, the rest kept)."""
    return {k: (v[idx] if isinstance(v, torch.Tensor) and v.ndim else v) for k, v in cond.items()}


def _mse(err: torch.Tensor) -> torch.Tensor:
    return err.float().pow(2).reshape(err.shape[0], -1).mean(1)


def _noised(schedule: Schedule, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return _cast(schedule.alpha(t), x) * x + _cast(schedule.sigma(t), x) * eps


def _check(model, flow_map: bool, what: str) -> None:
    if flow_map and not isinstance(model, FlowMap):
        raise ValueError(f"{what} trains a flow map: the model must be a FlowMap (a network built with jump=True in a "
                         f"FlowMapDenoiser), got {type(model).__name__}")


class _FewStepLoss:
    """Shared: the time density, the teacher, and the flow-matching target of the instantaneous part."""

    columns = 0

    def __init__(self, time_density: TimeDensity | str = "uniform", teacher: Denoiser | None = None):
        self.time_density = as_density(time_density)
        self.teacher = teacher

    def draw(self, x: torch.Tensor, schedule: Schedule, generator: torch.Generator | None = None):
        t = self.time_density.sample(x.shape[0], schedule, generator)
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float32)
        return t, eps.to(device=x.device, dtype=x.dtype)

    def extra(self, n: int, schedule: Schedule, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, columns)`` float64 uniforms in [0, 1): the per-sample randomness beyond ``t`` and ``eps``."""
        return torch.rand(n, self.columns, generator=generator, dtype=torch.float64)

    def clean(self, x: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        """What ``D(x_t, t, t)`` is trained towards: the data (flow matching), or the teacher's ``x_hat``."""
        if self.teacher is None:
            return x
        with torch.no_grad():
            return self.teacher(x_t, t.to(x.device), **cond).to(x.dtype)

    def instant(self, model, x, x_t, t, cond) -> torch.Tensor:
        """Flow matching in output space at ``s = t`` (the instantaneous field of a flow map)."""
        target = self.clean(x, x_t, t, cond)
        skip, out = _skip_out(model, t)
        return _mse((model(x_t, t.to(x.device), **cond) - target) / _cast(out, x_t))


class MeanFlowLoss(_FewStepLoss):
    """The MeanFlow identity for a flow map in any parameterization (see the module docstring).

    Args:
        jump_fraction: share of the batch with ``s < t`` (the rest has ``s = t``: flow matching).
        power, c: adaptive weight ``1 / (sg(err) + c)^power`` (``power = 0``: plain squared error).
        teacher: a denoiser whose probability-flow velocity replaces the conditional velocity.
    """

    def __init__(self, time_density: TimeDensity | str = "uniform", teacher: Denoiser | None = None, *,
                 jump_fraction: float = 0.25, power: float = 1.0, c: float = 1e-3):
        super().__init__(time_density, teacher)
        if not 0.0 < jump_fraction <= 1.0:
            raise ValueError(f"jump_fraction must be in (0, 1], got {jump_fraction}")
        self.jump_fraction, self.power, self.c = float(jump_fraction), float(power), float(c)

    columns = 3

    def times(self, t: torch.Tensor, extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t, s)``: ``s = t`` (flow matching) or, for the jumps, the ends of a uniformly drawn pair
        (the density of ``t`` grows towards 1, where sampling starts, whatever the time density)."""
        jump = extra[:, 2] < self.jump_fraction
        hi = torch.maximum(extra[:, 0], extra[:, 1]).clamp(T_LO, T_HI)
        return torch.where(jump, hi, t), torch.where(jump, torch.minimum(extra[:, 0], extra[:, 1]), t)

    def __call__(self, model, x, *, cond=None, t, eps, extra, step=0):
        _check(model, True, "MeanFlow")
        cond, sched = cond or {}, model.schedule
        t, s = self.times(torch.as_tensor(t, dtype=torch.float64), extra.cpu())
        t, s = t.to(x.device), s.to(x.device)
        x_t = _noised(sched, x, eps, t)
        if self.teacher is None:
            v = _cast(sched.d_alpha(t), x) * x + _cast(sched.d_sigma(t), x) * eps
        else:
            p, q = ode_coefficients(sched, t)
            v = _cast(p, x) * x_t + _cast(q, x) * self.clean(x, x_t, t, cond)

        def jump_and_output(x_t, t):
            a, b = _smooth_jump(sched, t, s)
            d = model(x_t, t, target=s, **cond)
            return _cast(a, x_t) * x_t + _cast(b, x_t) * d, _output(model, d, x_t, t)

        def b_out(t):
            return _smooth_jump(sched, t, s)[1] * _skip_out(model, t)[1]

        ones = torch.ones_like(t)
        (_, f), (x_dot, _) = torch.func.jvp(jump_and_output, (x_t, t), (v, ones))
        _, b_dot = torch.func.jvp(b_out, (t,), (ones,))
        target = (f - x_dot / _cast(b_dot, x_t)).detach()
        err = _mse(f - target)
        if self.power == 0:
            return err
        return err / (err.detach() + self.c) ** self.power


class ShortcutLoss(_FewStepLoss):
    """Self-consistency of a flow map in its step size (see the module docstring).

    Args:
        jump_fraction: share of the batch trained on self-consistency (the rest: flow matching).
        levels: jumps are the steps of the uniform ``2^k``-step grids, ``k = 0 .. levels - 1``, drawn
            uniformly per level (the jumps the flow-map sampler takes at ``2^k`` steps); the finest
            level splits into two instantaneous steps.
    """

    columns = 3

    def __init__(self, time_density: TimeDensity | str = "uniform", teacher: Denoiser | None = None, *,
                 jump_fraction: float = 0.25, levels: int = 7):
        super().__init__(time_density, teacher)
        if not 0.0 < jump_fraction <= 1.0:
            raise ValueError(f"jump_fraction must be in (0, 1], got {jump_fraction}")
        if not (isinstance(levels, int) and levels >= 1):
            raise ValueError(f"levels must be an integer >= 1, got {levels!r}")
        self.jump_fraction, self.levels = float(jump_fraction), levels

    @staticmethod
    def jump_times(level: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t, s)``: a step of the ``2^level``-step uniform grid, drawn uniformly by ``u`` in [0, 1)
        (so the one-step jump always starts at ``t = 1``, where sampling does)."""
        return _grid_step(torch.pow(2.0, level.double()), u)

    def target(self, model, x_t, t, s, level, cond) -> torch.Tensor:
        """``X(X(x_t, t, m), m, s)`` with ``m`` the midpoint; instantaneous halves at the finest level."""
        m = 0.5 * (t + s)
        finest = level == self.levels - 1

        def half(x, t0, t1):  # D(x, t0, t0) is the instantaneous x_hat: one evaluation either way
            return _step(model.schedule, x, model(x, t0, target=torch.where(finest, t0, t1), **cond), t0, t1)

        with torch.no_grad():
            return half(half(x_t, t, m), m, s)

    def residual(self, model, x_t, t, s, level, cond) -> torch.Tensor:
        """``(X(x_t, t, s) - X*) / B(t, s)``: the self-consistency error in output space."""
        _, b = jump_coefficients(model.schedule, t, s)
        _, out = _skip_out(model, t)
        return (model.jump(x_t, t, s, **cond) - self.target(model, x_t, t, s, level, cond)) / _cast(b * out, x_t)

    def __call__(self, model, x, *, cond=None, t, eps, extra, step=0):
        _check(model, True, "The shortcut objective")
        cond, sched = cond or {}, model.schedule
        t = torch.as_tensor(t, dtype=torch.float64).to(x.device)
        extra = extra.to(x.device)
        x_t = _noised(sched, x, eps, t)
        jump = extra[:, 1] < self.jump_fraction
        loss = torch.zeros(x.shape[0], device=x.device)
        idx = torch.nonzero(~jump).flatten()
        if idx.numel():
            loss = loss.index_put((idx,), self.instant(model, x[idx], x_t[idx], t[idx], _rows(cond, idx)))
        idx = torch.nonzero(jump).flatten()
        if idx.numel():
            sub = _rows(cond, idx)
            level = torch.clamp((extra[idx, 0] * self.levels).long(), max=self.levels - 1)
            tj, s = self.jump_times(level, extra[idx, 2])
            loss = loss.index_put((idx,), _mse(self.residual(model, x_t[idx], tj, s, level, sub)))
        return loss


class ConsistencyLoss(_FewStepLoss):
    """Consistency training (no teacher) or distillation (with one), with the improved schedule.

    Args:
        total_steps: the length of the run (the discretisation doubles ``log2(s1 / s0) + 1`` times
            over it).
        s0, s1: the first and last number of discretisation intervals (default: 10 and 1280 for
            consistency training, 10 and 160 for distillation, whose second-order teacher step is
            accurate on coarser grids: with 1280 the consistency must link data to ``t = 1`` over
            so many intervals that a 3000-step digits student stayed at FD 35 in one step; with 160
            it reaches 2.0, and a fixed 18 reaches 1.6 in one step but loses accuracy at 2-8 steps
            on the moons).
        p_mean, p_std: log-normal weights of the noise levels ``sigma / alpha`` (iCT: -1.1, 2.0).
        huber_c: pseudo-Huber constant per dimension (iCT: 0.00054 sqrt(d)); 0: squared error.
    """

    columns = 1

    def __init__(self, teacher: Denoiser | None = None, *, total_steps: int = 10_000, s0: int | None = None,
                 s1: int | None = None, p_mean: float = -1.1, p_std: float = 2.0, huber_c: float = 0.00054):
        super().__init__("uniform", teacher)
        s0 = s0 if s0 is not None else 10
        s1 = s1 if s1 is not None else (1280 if teacher is None else max(s0, 160))
        if not (isinstance(total_steps, int) and total_steps >= 1 and 1 <= s0 <= s1):
            raise ValueError(f"need total_steps >= 1 and 1 <= s0 <= s1, got {total_steps}, {s0}, {s1}")
        self.total_steps, self.s0, self.s1 = total_steps, s0, s1
        self.p_mean, self.p_std, self.huber_c = float(p_mean), float(p_std), float(huber_c)
        self._grids: dict = {}

    def intervals(self, step: int) -> int:
        """The number of discretisation intervals at training step ``step``."""
        doublings = int(math.log2(self.s1 / self.s0)) + 1
        per_stage = max(1, self.total_steps // doublings)
        return min(self.s0 * 2 ** (step // per_stage), self.s1)

    def grid(self, schedule: Schedule, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The discretisation (``n`` intervals, Karras spacing ending at 0) and the inverse CDF of its
        interval weights."""
        key = (schedule, n)
        if key not in self._grids:
            from ..grids import karras_grid

            ts = karras_grid(n, schedule)
            ratio = schedule.sigma(ts) / schedule.alpha(ts)
            z = (torch.log(ratio) - self.p_mean) / (math.sqrt(2.0) * self.p_std)
            w = (torch.erf(z[:-1]) - torch.erf(z[1:])).clamp_min(0.0)
            self._grids[key] = (ts, torch.cumsum(w, 0) / w.sum())
        return self._grids[key]

    def __call__(self, model, x, *, cond=None, t=None, eps, extra, step=0):
        _check(model, True, "Consistency training")
        cond, sched = cond or {}, model.schedule
        ts, cdf = self.grid(sched, self.intervals(step))
        i = torch.searchsorted(cdf, extra[:, 0].cpu().contiguous()).clamp(max=len(cdf) - 1)
        t, u = ts[i].to(x.device), ts[i + 1].to(x.device)
        x_t = _noised(sched, x, eps, t)
        if self.teacher is None:
            x_u = _noised(sched, x, eps, u)
        else:
            with torch.no_grad():   # Heun's step in the data form: DDIM, then the trapezoid of its two outputs
                d_t = self.clean(x, x_t, t, cond)
                x_u = _step(sched, x_t, d_t, t, u)
                d_u = torch.where(_cast(u, x) > 0, self.teacher(x_u, u, **cond).to(x.dtype), x_u)
                x_u = _step(sched, x_t, 0.5 * (d_t + d_u), t, u)
        zero = torch.zeros_like(t)
        with torch.no_grad():
            target = torch.where(_cast(u, x) > 0, model(x_u, u, target=zero, **cond), x_u)
        diff = (model(x_t, t, target=zero, **cond) - target).float().reshape(x.shape[0], -1)
        def ratio(v):
            return sched.sigma(v) / sched.alpha(v)
        weight = (1.0 / (ratio(t) - torch.where(u > 0, ratio(u), torch.zeros_like(u)))).float()
        if self.huber_c == 0:
            return weight * diff.pow(2).mean(1)
        c = self.huber_c * math.sqrt(diff.shape[1])
        return weight * (torch.sqrt(diff.pow(2).sum(1) + c * c) - c)


class ProgressiveDistillationLoss(_FewStepLoss):
    """One student DDIM step matches two teacher DDIM steps, on the ``steps``-step uniform grid."""

    columns = 1

    def __init__(self, teacher: Denoiser, steps: int):
        super().__init__("uniform", teacher)
        if teacher is None:
            raise ValueError("progressive distillation needs a teacher (the model whose step count it halves)")
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"the student's step count must be an integer >= 1, got {steps!r}")
        self.steps = steps

    def __call__(self, model, x, *, cond=None, t=None, eps, extra, step=0):
        cond, sched, n = cond or {}, model.schedule, self.steps
        t, s = (v.to(x.device) for v in _grid_step(n, extra[:, 0].cpu()))
        m = 0.5 * (t + s)
        x_t = _noised(sched, x, eps, t)
        with torch.no_grad():
            x_m = _step(sched, x_t, self.teacher(x_t, t, **cond).to(x.dtype), t, m)
            x_s = _step(sched, x_m, self.teacher(x_m, m, **cond).to(x.dtype), m, s)
            a, b = jump_coefficients(sched, t, s)
            target = (x_s - _cast(a, x) * x_t) / _cast(b, x)   # the x_hat whose DDIM step lands at x_s
        return _mse((model(x_t, t, **cond) - target) / _cast(_skip_out(model, t)[1], x_t))

"""What a fit is judged on: the teacher's solve of the draws and the counted model, the per-draw endpoint
errors and their trimmed RMS, the split into fitting and held-out draws, and where a tuned run starts
(see :mod:`sdeflow.tuning`)."""

from __future__ import annotations

import math

import torch

from .. import grids
from ..denoisers import Denoiser
from ..run import Steps
from ..samplers import DPMSolver
from ..sampling import sample


class CountedDenoiser(Denoiser):
    """The denoiser counting its calls; it sees states in ``dtype`` (the model's) and answers in the
    caller's dtype, so a float64 reference solve can drive a float32 network."""

    def __init__(self, denoiser, dtype):
        super().__init__(denoiser.schedule)
        self.inner, self.dtype, self.calls = denoiser, dtype, 0

    def forward(self, x_t, t, **cond):
        self.calls += 1
        return self.inner(x_t.to(self.dtype), t, **cond).to(x_t.dtype)

    def has_ode_velocity(self, t: float) -> bool:
        return self.inner.has_ode_velocity(t)

    def ode_velocity(self, x_t, t, **cond):
        self.calls += 1
        return self.inner.ode_velocity(x_t.to(self.dtype), t, **cond).to(x_t.dtype)


class Teacher:
    """The reference solve from the draws ``x_init`` of ``p_{t_max}`` to ``t = 0``: third-order
    DPM-Solver in data form, float64 states, on :func:`~sdeflow.grids.reference_grid` with ``steps``
    (merged with ``times``). ``end``: its endpoint; ``states``: its states at ``times`` (decreasing),
    which the DP search starts its one-step trials from. ``calls``: model evaluations it took.
    One teacher serves every sampler and NFE tuned on the same draws."""

    def __init__(self, denoiser, x_init: torch.Tensor, *, cond: dict | None = None, t_max: float | None = None,
                 steps: int = 300, times=None):
        sch = denoiser.schedule
        self.denoiser, self.cond, self.x_init = denoiser, cond, x_init.detach()
        self.t_max = grids.start_time(sch) if t_max is None else float(t_max)
        ts = grids.reference_grid(torch.tensor([self.t_max, 0.0], dtype=torch.float64), sch, steps)
        self.times = None if times is None else torch.as_tensor(times, dtype=torch.float64)
        if self.times is not None:
            ts = torch.unique(torch.cat([ts, self.times])).flip(0)
        counted = CountedDenoiser(denoiser, self.x_init.dtype)
        with torch.no_grad():
            r = sample(counted, DPMSolver(order=3, form="data"), ts, self.x_init.to(torch.float64), cond=cond,
                       return_trajectory=self.times is not None)
        self.calls, self.end, self.states = counted.calls, r.x, None
        self.step_costs: dict = {}  # per sampler: the DP's one-step errors between candidates (every budget's)
        if self.times is not None:
            self.states = r.trajectory[[int(torch.nonzero(ts == float(t))[0, 0]) for t in self.times]]


#: Share of the worst draws a fit's loss leaves out: a draw that ends in another mixture component
#: than the teacher's costs 30-100x a typical draw, and one such draw decides a plain RMS.
TRIM = 0.1
#: Share of the draws held out of every fit: fits are selected, and kept at all, on these.
HOLDOUT = 0.3


def trimmed_rms(sq_errors: torch.Tensor, trim: float = 0.0) -> torch.Tensor:
    """Root mean of the per-draw squared errors ``sq_errors`` without the ``floor(trim * B)`` largest
    (differentiable)."""
    drop = int(trim * sq_errors.numel())
    if drop:
        sq_errors = torch.topk(sq_errors, sq_errors.numel() - drop, largest=False).values
    return sq_errors.mean().sqrt()


def squared_errors(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-draw squared Euclidean distance of ``x`` to ``target``, in the target's dtype."""
    return (x.to(target.dtype) - target).flatten(1).pow(2).sum(1)


def draw_errors(denoiser, sampler, ts, x_init, target, cond=None) -> torch.Tensor:
    """Per-draw squared endpoint errors (float64) of ``sampler`` on ``ts`` against ``target``."""
    with torch.no_grad():
        x = sample(denoiser, sampler, ts, x_init, cond=cond, check_finite=False).x
    return squared_errors(x, target.to(torch.float64))


def endpoint_loss(denoiser, sampler, ts, x_init, target, cond=None, trim: float = 0.0) -> float:
    """RMS over the draws of the endpoint error of ``sampler`` on ``ts`` against ``target``, without
    the ``trim`` share of the worst draws (``inf`` where the run is not finite)."""
    loss = float(trimmed_rms(draw_errors(denoiser, sampler, ts, x_init, target, cond), trim))
    return loss if math.isfinite(loss) else math.inf


def check_trim(trim: float) -> None:
    if not 0.0 <= trim < 0.5:
        raise ValueError(f"trim must be a share of the draws in [0, 0.5), got {trim}")


def cond_rows(cond: dict | None, rows, batch: int) -> dict | None:
    """``cond`` for the draws ``rows`` (a slice or indices) of a batch of ``batch``: per-draw tensors
    indexed, the rest (a guidance scale, a shared tensor) as they are."""
    if cond is None:
        return None
    return {k: v[rows] if torch.is_tensor(v) and v.ndim and v.shape[0] == batch else v for k, v in cond.items()}


def check_holdout(holdout: float, name: str = "holdout") -> None:
    """Refuse a ``holdout`` (or ``check``) that is neither a share of the draws (between 0 and 1) nor a
    whole number of them."""
    if not (0.0 < holdout < 1.0 or holdout >= 1 and float(holdout).is_integer()):
        raise ValueError(f"{name} must be a share of the draws between 0 and 1, or a whole number of draws from 1 "
                         f"up, got {holdout}")


class Split:
    """A teacher's draws split into those fitted on, the next ``holdout`` (held out: fits are selected
    on them, and kept at all only if they beat the best hand grid there) and the last ``check`` (apart
    from fitting and selection: a fit must beat that grid on them too; none by default). Each is a
    share of the draws below 1, a number of them from 1 up. :meth:`draws` gives ``(x_init, target,
    cond)`` of a part; ``x_init``: the runs' first states when they are not the teacher's (a start
    below the top)."""

    def __init__(self, teacher: "Teacher", holdout: float = HOLDOUT, x_init: torch.Tensor | None = None,
                 check: float = 0):
        n = teacher.x_init.shape[0]
        self.n_fit = self.fit_count(n, holdout, check)
        self.n_check = self.count(n, check) if check else 0
        self.teacher, self.x_init = teacher, teacher.x_init if x_init is None else x_init
        end = n - self.n_check
        self.parts = {"fit": slice(0, self.n_fit), "held": slice(self.n_fit, end), "check": slice(end, None),
                      "all": slice(0, end)}

    @staticmethod
    def count(n: int, share: float) -> int:
        """How many of ``n`` draws a share below 1 (rounded) or a number from 1 up is."""
        return n - int(round(n * (1.0 - share))) if share < 1 else int(share)

    @staticmethod
    def fit_count(n: int, holdout: float, check: float = 0) -> int:
        """How many of ``n`` draws a fit sees at ``holdout`` and ``check``; refused unless the fitted and
        held-out parts have at least one draw each (and the check part, where asked for)."""
        check_holdout(holdout)
        if check:
            check_holdout(check, "check")
        n_held, n_check = Split.count(n, holdout), Split.count(n, check) if check else 0
        n_fit = n - n_held - n_check
        if n_fit < 1 or n_held < 1 or check and n_check < 1:
            raise ValueError(f"{n} draws cannot be split into fitting and held-out draws at holdout={holdout}"
                             f"{f' and check={check}' if check else ''}: use more draws")
        return n_fit

    def draws(self, which: str):
        sl, t = self.parts[which], self.teacher
        return self.x_init[sl], t.end[sl], cond_rows(t.cond, sl, t.x_init.shape[0])

    def held_out(self, denoiser, sampler, ts, trim: float, which: str = "held") -> tuple[float, float]:
        """``(trimmed RMS, RMS)`` of ``sampler`` on ``ts`` over the held-out draws (or the part ``which``;
        ``inf`` if not finite)."""
        err = draw_errors(denoiser, sampler, ts, *self.draws(which))
        out = float(trimmed_rms(err, trim)), float(trimmed_rms(err))
        return tuple(v if math.isfinite(v) else math.inf for v in out)



def refusal(fit: tuple[float, float], base: tuple[float, float], fit_on, base_on, n_check: int = 0) -> str | None:
    """Why a fit is not kept against ``base`` (the best hand grid, or the sampler's own coefficients),
    or ``None`` where it is. ``fit``, ``base``: ``(trimmed RMS, RMS)`` over the held-out draws;
    ``fit_on(part)``, ``base_on(part)``: the same over a part of :class:`Split` (``"all"``, ``"check"``).
    A fit is kept where it has the lower trimmed error and no higher RMS on the held-out draws, no
    higher RMS over the draws fitted and held out (its trimmed loss is blind to its worst fitting draws,
    so it can buy a lower typical error by sending a few more of them to another component: this shows
    it), and, where there are ``n_check`` check draws, the lower trimmed error and no higher RMS on them."""
    if not (fit[0] < base[0] and fit[1] <= base[1]):
        return (f"on the held-out draws (trimmed RMS {fit[0]:.3g} against {base[0]:.3g}, RMS {fit[1]:.3g} against "
                f"{base[1]:.3g}: a fit must be lower in the first and no higher in the second)")
    fit_all, base_all = fit_on("all")[1], base_on("all")[1]
    if not fit_all <= base_all:
        return (f"in the RMS over all the draws ({fit_all:.3g} against {base_all:.3g}: the trimmed loss gave up some "
                "of the draws it was fitted on)")
    if n_check:  # draws that neither fitted nor selected it have their say too
        fit, base = fit_on("check"), base_on("check")
        if not (fit[0] < base[0] and fit[1] <= base[1]):
            return (f"on the {n_check} check draws (trimmed RMS {fit[0]:.3g} against {base[0]:.3g}, RMS {fit[1]:.3g} "
                    f"against {base[1]:.3g}: a fit must be lower in the first and no higher in the second)")
    return None


#: Where a tuned grid's run begins: at the top of the schedule; ``leading``, one step's worth below it
#: (the top's noise taken as a draw there, as diffusers' ``leading`` spacing does); ``teleport``, at
#: ``t_skip`` where the data's Gaussian carries the noise exactly (:class:`~sdeflow.teleport.Teleport`).
STARTS = ("top", "leading", "teleport")


def start_state(start: str, schedule, x_top: torch.Tensor, n: int, teleport=None, t_skip: float | None = None,
                top: float | None = None):
    """``(t_start, x_start)``: where an ``n``-step run under the convention ``start`` (see :data:`STARTS`)
    begins, and its first states, for the states ``x_top`` at the time ``top`` of the draws (default:
    the top of the schedule; for a teleport, the Gaussian's own states there, ``teleport.start(z,
    top)``, which its flow carries on exactly). ``"top"`` starts where the draws are, at ``top``."""
    top = grids.start_time(schedule) if top is None else float(top)
    if start == "top":
        return top, x_top
    if start == "leading":
        return (top * (n - 1) / n if n > 1 else top), x_top
    if start == "teleport":
        if teleport is None or t_skip is None:
            raise ValueError("a teleport start needs the data's Gaussian (teleport=) and its time t_skip")
        return float(t_skip), teleport.flow(x_top, schedule, top, float(t_skip))
    raise ValueError(f"unknown start {start!r}; allowed: {', '.join(STARTS)}, search")


def run_error(sampler, plan, field, x: torch.Tensor, target: torch.Tensor, trim: float = 0.0) -> torch.Tensor:
    """RMS endpoint error against ``target`` (in its dtype) of ``sampler`` running ``plan`` from ``x``
    through ``field``, without the ``trim`` share of the worst draws, as a tensor that carries the
    run's gradients (the fits' differentiable loss)."""
    steps = Steps(sampler, plan, field)
    x, _ = steps.run_steps(steps.start(x), 0, len(plan.t))
    return trimmed_rms(squared_errors(x, target), trim)

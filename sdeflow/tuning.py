"""Time grids tuned to a model, a sampler and a budget of evaluations.

At 5-10 evaluations the error of a good solver is dominated by where its steps fall, and the best
places depend on the model and its data. :func:`optimize_grid` fits a grid for one model, sampler and
NFE on a batch of prior draws against a *teacher*: a many-step reference solve of the
probability-flow ODE from the same draws (third-order DPM-Solver on a fine grid, float64).

- ``"dp"``: dynamic programming over a fine candidate grid, uniform in logSNR. The cost of a step
  between two candidates is the RMS error of one step of the sampler started on the teacher's
  trajectory; the ``n``-step grid with the least summed local error is found exactly (the
  optimal-stepsize / GITS construction).
- ``"descent"``: the endpoint RMS error against the teacher (LD3's teacher loss) minimised over the
  grid's ``n`` free parameters by Adam, from the best hand grid. The samplers plan their coefficients
  as Python floats, so the loss is a smooth function of ``n`` numbers with no autograd path; its
  gradient is taken by central differences (``2n`` sampler runs per iteration).
- ``"dp+descent"`` (the default): the DP grid, refined by descent.

Every tuned grid has ``n`` steps and ends with a step to clean data:
``t_max = t_0 > t_1 > ... > t_{n-1} > t_n = 0``. Its free times are parameterized in logSNR between
``lam(t_max)`` and the smallest level allowed (noise level ``sigma / alpha = 1e-3``, or a discrete
schedule's first training step) by a softmax of ``n`` logits (``n - 1`` increments and a remainder),
so every parameter value is a valid, strictly decreasing grid inside the schedule's domain.

For Gaussian data the exact output law of a sampler is a function of the grid
(:func:`~sdeflow.analytic.gaussian_output_law`): :func:`exact_optimal_grid` minimises the exact W2
over the same parameters, the certificate every fitted or hand grid is scored against, and
:func:`ays_gaussian_grid` is Align Your Steps' closed form (a tangent law in the noise level).

Tuned grids are values: :class:`TunedGrid` records the grid with its sampler, NFE, loss, the best
hand grid's loss and the fitting cost, and :func:`save_tuned` / :func:`load_tuned` keep them in a JSON
file beside a checkpoint (``<checkpoint>.grids.json``), where ``sdeflow sample --grid tuned`` finds them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

import torch

from . import grids
from .denoisers import Denoiser
from .files import write_json
from .samplers import DPMSolver
from .sampling import sample
from .schedules import Schedule

#: Smallest noise level ``sigma / alpha`` a tuned grid may step to before its final step to ``t = 0``.
SIGMA_FLOOR = 1e-3
METHODS = ("dp+descent", "dp", "descent")
#: Hand grids a tuned grid is compared with (and the descent may start from).
HAND_GRIDS = ("auto", "logsnr", "karras", "polyexponential", "quadratic", "uniform")


@dataclass
class TunedGrid:
    """A grid fitted for one model, sampler and NFE.

    ``loss``: its endpoint RMS error to the teacher on the fitting draws; ``hand``: the same loss
    of every hand grid with the same number of steps; ``cost_nfe``: model evaluations spent fitting
    (each on the batch of ``samples`` draws), teacher included."""

    ts: list[float]
    sampler: str
    nfe: int
    method: str
    loss: float
    hand: dict[str, float] = field(default_factory=dict)
    cost_nfe: int = 0
    samples: int = 0

    @property
    def best_hand(self) -> tuple[str, float]:
        name = min(self.hand, key=self.hand.get)
        return name, self.hand[name]

    def grid(self) -> torch.Tensor:
        return grids.check_grid(self.ts)


class GridSpace:
    """The ``n``-step grids ending at ``t = 0``, as ``n`` unconstrained logits (see the module docstring)."""

    def __init__(self, schedule: Schedule, n: int, t_max: float | None = None):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"number of steps must be an integer >= 1, got {n!r}")
        self.schedule, self.n = schedule, n
        self.t_max = grids.start_time(schedule) if t_max is None else float(t_max)
        self.t_lo = grids.default_t_min(schedule, SIGMA_FLOOR)
        if not 0 < self.t_lo < self.t_max:
            raise ValueError(f"t_max={self.t_max} leaves no room above the smallest time {self.t_lo:.4g}")
        lam = schedule.logsnr(torch.tensor([self.t_max, self.t_lo], dtype=torch.float64))
        if not bool(torch.isfinite(lam).all()):
            raise ValueError("logSNR is infinite at t_max: choose t_max < 1 for a zero-terminal-SNR schedule")
        self.lam0, self.lam_hi = float(lam[0]), float(lam[1])
        self.floor = 1e-4 / n  # every increment keeps at least this share: times stay distinct

    def grid(self, theta: torch.Tensor) -> torch.Tensor:
        """The grid of logits ``theta`` (``n`` values)."""
        if self.n == 1:
            return grids.check_grid([self.t_max, 0.0])
        w = self.floor + (1 - self.n * self.floor) * torch.softmax(theta.to(torch.float64), 0)
        lam = self.lam0 + (self.lam_hi - self.lam0) * torch.cumsum(w[:-1], 0)
        inner = self.schedule.t_from_logsnr(lam).clamp(self.t_lo, self.t_max)
        return grids.check_grid(torch.cat([torch.tensor([self.t_max], dtype=torch.float64), inner,
                                           torch.zeros(1, dtype=torch.float64)]))

    def logits(self, ts) -> torch.Tensor:
        """Logits of the grid nearest to ``ts`` (an ``n``-step grid ending at 0) in this space."""
        ts = grids.check_grid(ts)
        if ts.numel() != self.n + 1 or float(ts[-1]) != 0.0:
            raise ValueError(f"expected a grid of {self.n} steps ending at t = 0, got {ts.numel() - 1} steps "
                             f"ending at {float(ts[-1]):.4g}")
        if self.n == 1:
            return torch.zeros(1, dtype=torch.float64)
        inner = ts[1:-1].clamp(self.t_lo, self.t_max)
        u = ((self.schedule.logsnr(inner) - self.lam0) / (self.lam_hi - self.lam0)).clamp(0.0, 1.0)
        steps = torch.diff(torch.cat([torch.zeros(1, dtype=torch.float64), u, torch.ones(1, dtype=torch.float64)]))
        w = ((steps - self.floor) / (1 - self.n * self.floor)).clamp_min(1e-300)
        return torch.log(w / w.sum())


def steps_for(sampler, schedule: Schedule, nfe: int) -> int:
    """The number of steps of a grid ending at ``t = 0`` whose run takes at most ``nfe`` evaluations."""
    from .registry import steps_for_nfe

    return steps_for_nfe(sampler, schedule, "logsnr", nfe)


class _Counted(Denoiser):
    """The denoiser counting its calls; it sees states in ``dtype`` (the model's) and answers in the
    caller's dtype, so a float64 reference solve can drive a float32 network."""

    def __init__(self, denoiser, dtype):
        super().__init__(denoiser.schedule)
        self.inner, self.dtype, self.calls = denoiser, dtype, 0

    def forward(self, x_t, t, **cond):
        self.calls += 1
        return self.inner(x_t.to(self.dtype), t, **cond).to(x_t.dtype)


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
        counted = _Counted(denoiser, self.x_init.dtype)
        with torch.no_grad():
            r = sample(counted, DPMSolver(order=3, form="data"), ts, self.x_init.to(torch.float64), cond=cond,
                       return_trajectory=self.times is not None)
        self.calls, self.end, self.states = counted.calls, r.x, None
        if self.times is not None:
            self.states = r.trajectory[[int(torch.nonzero(ts == float(t))[0, 0]) for t in self.times]]


def candidate_times(space: "GridSpace", candidates: int = 40) -> torch.Tensor:
    """``candidates`` times uniform in logSNR from ``t_max`` to the smallest level of ``space``: the
    points the DP search chooses its grid from."""
    lam = torch.linspace(space.lam0, space.lam_hi, candidates, dtype=torch.float64)
    times = space.schedule.t_from_logsnr(lam).clamp(space.t_lo, space.t_max)
    times[0] = space.t_max
    return times


def _rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    d = x.reshape(x.shape[0], -1).to(torch.float64) - ref.reshape(ref.shape[0], -1)
    return float(d.pow(2).sum(1).mean().sqrt())


def endpoint_loss(denoiser, sampler, ts, x_init, target, cond=None) -> float:
    """RMS over the draws of the endpoint error of ``sampler`` on ``ts`` against ``target``
    (``inf`` where the run is not finite)."""
    with torch.no_grad():
        x = sample(denoiser, sampler, ts, x_init, cond=cond, check_finite=False).x
    loss = _rms(x, target)
    return loss if math.isfinite(loss) else math.inf


def dp_grid(denoiser, sampler, space: GridSpace, teacher: Teacher) -> torch.Tensor:
    """The ``n``-step grid over the teacher's candidate times (and ``t = 0``) whose summed one-step
    errors along the teacher's trajectory are least (exact dynamic programming, :func:`best_path`)."""
    n, m = space.n, len(teacher.times)
    points = teacher.times.tolist() + [0.0]
    targets = list(teacher.states) + [teacher.end]
    cost = [[math.inf] * (m + 1) for _ in range(m)]
    dtype = teacher.x_init.dtype
    for i in range(m):
        for j in range(i + 1, m + 1):
            if j == m or n > 1:  # with one step only the jump to t = 0 is allowed
                cost[i][j] = endpoint_loss(denoiser, sampler, [points[i], points[j]], teacher.states[i].to(dtype),
                                           targets[j], teacher.cond)
    return grids.check_grid([points[p] for p in best_path(cost, n)])


def best_path(cost: list[list[float]], n: int) -> list[int]:
    """The path ``0 = p_0 < p_1 < ... < p_n = m`` of ``n`` steps through points ``0..m`` whose summed
    ``cost[p_k][p_{k+1}]`` is least (``cost`` is ``m x (m + 1)``; ``inf`` forbids a step), by dynamic
    programming in ``O(n m^2)``."""
    m = len(cost)
    inf = math.inf
    best = [[inf] * (m + 1) for _ in range(n + 1)]  # best[k][j]: least cost of k steps from 0 to j
    back = [[-1] * (m + 1) for _ in range(n + 1)]
    best[0][0] = 0.0
    for k in range(1, n + 1):
        for j in (range(1, m) if k < n else [m]):
            for i in range(j):
                c = best[k - 1][i] + cost[i][j]
                if c < best[k][j]:
                    best[k][j], back[k][j] = c, i
    if not math.isfinite(best[n][m]):
        raise ValueError(f"no {n}-step path over {m} candidates: use more candidates than steps")
    path, j = [m], m
    for k in range(n, 0, -1):
        j = back[k][j]
        path.append(j)
    return path[::-1]


def descend(loss, theta: torch.Tensor, *, iters: int = 60, h: float = 1e-3,
            tol: float = 1e-5) -> tuple[torch.Tensor, float, int]:
    """Minimise ``loss(theta) > 0`` by BFGS on ``log loss`` (scale-free: a grid's error spans decades)
    with central-difference gradients and a backtracking line search. Returns the best ``theta``,
    its loss and the number of loss evaluations. Stops after ``iters`` iterations, when a step no
    longer lowers ``log loss`` by ``tol``, or when no step along the search direction helps."""
    evals = 0

    def f(th):
        nonlocal evals
        evals += 1
        value = loss(th)
        return math.log(value) if value > 0 and math.isfinite(value) else (-math.inf if value == 0 else math.inf)

    def grad(th):
        g = torch.zeros_like(th)
        for k in range(th.numel()):
            e = torch.zeros_like(th)
            e[k] = h
            up, down = f(th + e), f(th - e)
            g[k] = (up - down) / (2 * h) if math.isfinite(up) and math.isfinite(down) else 0.0
        return g

    theta = theta.clone().to(torch.float64)
    fx = f(theta)
    if theta.numel() == 0 or not math.isfinite(fx):
        return theta, math.exp(fx) if fx < math.inf else math.inf, evals
    g = grad(theta)
    inv = None  # the inverse-Hessian estimate; None: a scaled steepest-descent step
    for _ in range(iters):
        d = -g if inv is None else -(inv @ g)
        if float(d @ g) >= 0:  # not a descent direction: restart from steepest descent
            inv, d = None, -g
        if inv is None:
            d = d * (0.5 / max(float(d.abs().max()), 1e-12))  # a first step of at most 0.5 in any logit
        step, slope = 1.0, float(d @ g)
        while step > 1e-4:
            new = theta + step * d
            fn = f(new)
            if fn <= fx + 1e-4 * step * slope:
                break
            step /= 2
        else:
            if inv is None:
                break
            inv = None
            continue
        g_new = grad(new)
        s_k, y_k = new - theta, g_new - g
        sy = float(s_k @ y_k)
        if sy > 1e-12:
            if inv is None:
                inv = torch.eye(theta.numel(), dtype=torch.float64) * (sy / float(y_k @ y_k))
            rho = 1.0 / sy
            eye = torch.eye(theta.numel(), dtype=torch.float64)
            inv = (eye - rho * torch.outer(s_k, y_k)) @ inv @ (eye - rho * torch.outer(y_k, s_k)) + rho * torch.outer(s_k, s_k)
        done = fx - fn < tol
        theta, fx, g = new, fn, g_new
        if done:
            break
    return theta, math.exp(fx), evals


def hand_grids(schedule: Schedule, n: int, t_max: float | None = None) -> dict[str, torch.Tensor]:
    """The hand grids of :data:`HAND_GRIDS` with ``n`` steps ending at ``t = 0`` that the schedule takes."""
    from .registry import GRIDS

    out = {}
    for name in HAND_GRIDS:
        try:
            ts = GRIDS[name](n, schedule)
        except ValueError:
            continue
        if float(ts[-1]) == 0.0 and ts.numel() == n + 1 and not bool(grids.below_domain(ts, schedule).any()):
            out[name] = ts
    return out


def optimize_grid(denoiser, sampler, nfe: int, x_init: torch.Tensor | None = None, *, teacher: Teacher | None = None,
                  sampler_name: str | None = None, cond: dict | None = None, method: str = "dp+descent",
                  candidates: int = 40, starts: int = 3, iters: int = 60, teacher_steps: int = 300,
                  t_max: float | None = None) -> TunedGrid:
    """A grid for ``denoiser``, ``sampler`` and a budget of ``nfe`` evaluations, fitted on the draws
    ``x_init`` of ``p_{t_max}`` (about 100 are enough; see :func:`~sdeflow.sampling.prior_sample`)
    against the teacher (see the module docstring for ``method``), or against a :class:`Teacher`
    already computed on those draws (give ``teacher`` instead of ``x_init``, ``cond`` and ``t_max``).
    The descent runs from the DP grid and from the ``starts`` hand grids with the least loss (the
    landscape has several basins); the best result wins.

    Returns a :class:`TunedGrid` with the fitted loss, every hand grid's loss and the cost of fitting
    in model evaluations (each on the whole batch of draws), the teacher's included."""
    if method not in METHODS:
        raise ValueError(f"unknown tuning method {method!r}; allowed: {', '.join(METHODS)}")
    label = sampler_name or type(sampler).__name__
    if sampler.stochastic or sampler.adaptive:
        raise ValueError(f"{label} is {'stochastic' if sampler.stochastic else 'adaptive'}: "
                         "grids are tuned for deterministic fixed-grid samplers")
    if candidates < 4 or starts < 0:
        raise ValueError(f"need candidates >= 4 and starts >= 0, got {candidates} and {starts}")
    if (x_init is None) == (teacher is None):
        raise ValueError("give the draws x_init or a Teacher computed on them, not both")
    sch = denoiser.schedule
    n = steps_for(sampler, sch, nfe)
    t_max = teacher.t_max if teacher is not None else t_max
    space = GridSpace(sch, n, t_max)
    want_dp = method in ("dp", "dp+descent")
    teacher_calls = 0
    if teacher is None or (want_dp and teacher.times is None):
        draws = teacher.x_init if teacher is not None else x_init
        cond = teacher.cond if teacher is not None else cond
        teacher = Teacher(denoiser, draws, cond=cond, t_max=space.t_max, steps=teacher_steps,
                          times=candidate_times(space, candidates) if want_dp else None)
        teacher_calls = teacher.calls
    counted = _Counted(denoiser, teacher.x_init.dtype)

    def loss_of(ts):
        return endpoint_loss(counted, sampler, ts, teacher.x_init, teacher.end, teacher.cond)

    hands = hand_grids(sch, n, space.t_max)
    hand = {name: loss_of(ts) for name, ts in hands.items()}
    finite = sorted((v, k) for k, v in hand.items() if math.isfinite(v))
    begin = [space.grid(space.logits(hands[k])) for _, k in finite[:starts]] if method != "dp" else []
    if want_dp:
        begin.insert(0, dp_grid(counted, sampler, space, teacher))
    if not begin:
        raise ValueError("no hand grid gives a finite result to start the descent from")
    ts, best = None, math.inf
    for start in begin:  # the DP grid (kept as it is for "dp") and the best hand grids, each refined
        now = loss_of(start)
        if method != "dp" and n > 1:
            theta, now, _ = descend(lambda th: loss_of(space.grid(th)), space.logits(start), iters=iters)
            start = space.grid(theta)
        if now < best:
            ts, best = start, now
    return TunedGrid(ts.tolist(), label, sampler.prepare(sch, ts).nfe, method, best, hand,
                     counted.calls + teacher_calls, teacher.x_init.shape[0])


def exact_optimal_grid(mixture, sampler, schedule: Schedule, nfe: int, *, iters: int = 200,
                       t_max: float | None = None) -> tuple[torch.Tensor, float]:
    """The grid of ``nfe`` evaluations minimising the exact W2 between ``sampler``'s output law and one
    Gaussian ``mixture`` (diagonal covariance), and that W2: the best of descents started from every
    hand grid."""
    from .analytic.sampler_law import gaussian_output_law, gaussian_w2

    n = steps_for(sampler, schedule, nfe)
    space = GridSpace(schedule, n, t_max)
    mu, var = mixture.means[0], mixture.cov.var[0]

    def w2(ts):
        m, v = gaussian_output_law(mixture, sampler, schedule, ts)
        out = gaussian_w2(m, v.clamp_min(0), mu, var)
        return out if math.isfinite(out) else math.inf

    best_ts, best = None, math.inf
    for ts in hand_grids(schedule, n, t_max).values():  # a descent from every hand grid: the landscape has
        start = space.grid(space.logits(ts))           # several basins, and the best one wins
        if n == 1:
            return start, w2(start)
        theta, now, _ = descend(lambda th: w2(space.grid(th)), space.logits(start), iters=iters)
        if now < best:
            best_ts, best = space.grid(theta), now
    return best_ts, best


def ays_gaussian_grid(n: int, schedule: Schedule, data_std: float, t_max: float | None = None,
                      t_min: float | None = None) -> torch.Tensor:
    """Align Your Steps' closed form for Gaussian data of standard deviation ``c = data_std``: the
    noise levels ``sigma / alpha`` follow a tangent law, ``r_i = c tan((1 - u_i) atan(r_max / c) +
    u_i atan(r_min / c))`` with ``u_i = i / (n - 1)`` over ``n`` points, then a final step to ``t = 0``.
    Reference: Sabour et al., "Align Your Steps", 2024, arXiv:2404.14507."""
    if not data_std > 0:
        raise ValueError(f"data_std must be > 0, got {data_std}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of steps must be an integer >= 1, got {n!r}")
    t_max = grids.start_time(schedule) if t_max is None else t_max
    t_min = grids.default_t_min(schedule) if t_min is None else t_min
    if n == 1:
        return grids.check_grid([t_max, 0.0])
    r = torch.exp(-0.5 * schedule.logsnr(torch.tensor([t_max, t_min], dtype=torch.float64)))
    a, b = torch.atan(r / data_std)
    u = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    ts = grids.sigma_times(data_std * torch.tan((1 - u) * a + u * b), schedule)
    ts[0], ts[-1] = t_max, t_min
    return grids.check_grid(torch.cat([ts, torch.zeros(1, dtype=torch.float64)]))


# --- tuned grids beside a checkpoint ---------------------------------------------------------------

def tuned_path(checkpoint_path: str) -> str:
    """Where the tuned grids of a checkpoint file live: ``<name>.grids.json`` beside it."""
    root, _ = os.path.splitext(checkpoint_path)
    return root + ".grids.json"


def load_tuned(path: str) -> list[TunedGrid]:
    """The tuned grids stored in ``path`` (none if the file does not exist)."""
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            data = json.load(f)
        return [TunedGrid(**entry) for entry in data["grids"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a tuned-grid file: {e}") from None


def save_tuned(path: str, new: list[TunedGrid]) -> list[TunedGrid]:
    """Add ``new`` to the grids in ``path`` (replacing any for the same sampler and NFE), atomically."""
    keep = {(g.sampler, g.nfe): g for g in load_tuned(path)}
    keep.update({(g.sampler, g.nfe): g for g in new})
    entries = sorted(keep.values(), key=lambda g: (g.sampler, g.nfe))
    write_json(path, {"grids": [asdict(g) for g in entries]})
    return entries


def find_tuned(path: str, sampler: str, nfe: int, steps: int | None = None) -> TunedGrid:
    """The grid tuned for ``sampler`` at a budget of ``nfe`` in ``path`` (its NFE, or, where the sampler
    cannot spend the budget exactly, its number of ``steps``), or an error naming what is stored."""
    stored = load_tuned(path)
    for g in stored:
        if g.sampler == sampler and (g.nfe == nfe or (steps is not None and len(g.ts) - 1 == steps and g.nfe <= nfe)):
            return g
    have = ", ".join(f"{g.sampler} at NFE {g.nfe}" for g in stored) or "none"
    raise ValueError(f"no grid tuned for {sampler} at NFE {nfe} in {path} (stored: {have}); "
                     f"write one with: sdeflow tune --checkpoint ... --sampler {sampler} --nfe {nfe}")

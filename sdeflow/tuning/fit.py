"""Fitting a grid to a model: the DP over candidate times, the descent, and :func:`optimize_grid`,
which combines them over the draws of :mod:`.draws` (see :mod:`sdeflow.tuning`)."""

from __future__ import annotations

import math
import warnings

import torch

from .. import grids
from ..run import Run
from .draws import (HOLDOUT, STARTS, TRIM, CountedDenoiser, Split, Teacher, check_trim, endpoint_loss, refusal,
                    run_error, start_state)
from .space import GridSpace, candidate_times, hand_grids, steps_for
from .store import TunedGrid

METHODS = ("dp+descent", "dp", "descent")
GRADIENTS = ("autograd", "differences")


def dp_grid(denoiser, sampler, space: GridSpace, teacher: Teacher, draws: slice = slice(None),
            trim: float = 0.0) -> torch.Tensor:
    """The ``n``-step grid over the teacher's candidate times (and ``t = 0``) whose summed one-step
    errors along the teacher's trajectory (over its ``draws``, ``trim`` as in :func:`endpoint_loss`)
    are least (exact dynamic programming, :func:`best_path`)."""
    n, m = space.n, len(teacher.times)
    points = teacher.times.tolist() + [0.0]
    key = sampler
    try:
        hash(key)
    except TypeError:  # a user's unhashable sampler: kept by identity
        key = id(sampler)
    key = (key, draws.start, draws.stop, trim)
    cost = teacher.step_costs.get(key)
    if cost is None:  # computed once per teacher and sampler, shared by every budget
        targets = [s[draws] for s in teacher.states] + [teacher.end[draws]]
        dtype = teacher.x_init.dtype
        cond = None if teacher.cond is None else {k: v[draws] for k, v in teacher.cond.items()}
        cost = [[math.inf if j <= i else endpoint_loss(denoiser, sampler, [points[i], points[j]],
                                                       teacher.states[i][draws].to(dtype), targets[j], cond, trim)
                 for j in range(m + 1)] for i in range(m)]
        teacher.step_costs[key] = cost
    if n == 1:  # with one step only the jump to t = 0 is allowed
        cost = [[math.inf] * m + [row[m]] for row in cost]
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


def descend(loss, theta: torch.Tensor, *, iters: int = 60, h: float = 1e-3, tol: float = 1e-5,
            gradient=None) -> tuple[torch.Tensor, float, int]:
    """Minimise ``loss(theta) > 0`` by BFGS on ``log loss`` (scale-free: a grid's error spans decades)
    with a backtracking line search. Gradients: ``gradient(theta) -> (loss, d loss / d theta)`` when
    given (None where it cannot answer), else central differences of step ``h``. Returns the best
    ``theta``, its loss and the number of loss evaluations (those of ``gradient`` not included).
    Stops after ``iters`` iterations, when a step no longer lowers ``log loss`` by ``tol``, or when no
    step along the search direction helps."""
    evals = 0

    def f(th):
        nonlocal evals
        evals += 1
        value = loss(th)
        return math.log(value) if value > 0 and math.isfinite(value) else (-math.inf if value == 0 else math.inf)

    def grad(th):
        answer = gradient(th) if gradient is not None else None
        if answer is not None and answer[0] > 0 and math.isfinite(answer[0]) and bool(torch.isfinite(answer[1]).all()):
            return answer[1] / answer[0]  # of log loss
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
            eye = torch.eye(theta.numel(), dtype=torch.float64)
            inv = eye * (sy / float(y_k @ y_k)) if inv is None else inv  # the first curvature sets the scale
            rho = 1.0 / sy
            inv = (eye - rho * torch.outer(s_k, y_k)) @ inv @ (eye - rho * torch.outer(y_k, s_k)) + rho * torch.outer(s_k, s_k)
        done = fx - fn < tol
        theta, fx, g = new, fn, g_new
        if done:
            break
    return theta, math.exp(fx), evals


class GridGradient:
    """``gradient(theta) -> (loss, d loss / d theta)`` of the teacher loss of ``sampler`` on the grid
    ``space.grid(theta)``, by one sampling run through autograd (LD3's backpropagation through the
    sampler), whatever the number of grid points; ``None`` where it cannot answer.

    A plan is numbers computed from the grid (coefficients, evaluation times, changes of variables).
    The run takes each number as a leaf tensor, so one backward pass gives the loss's gradient in all of
    them, the evaluation times included (through the model's time input); the numbers' own derivatives
    in ``theta`` come from central differences of the planning, which evaluates no model. Where a
    perturbation changes the plan's structure (a step switching to its fallback), it answers ``None``
    and the descent takes central differences of the loss. ``calls``: model evaluations of the runs
    (each also differentiated)."""

    def __init__(self, counted, sampler, space: GridSpace, teacher: "Teacher", h: float = 1e-6,
                 split: "Split | None" = None, trim: float = 0.0):
        self.counted, self.sampler, self.space, self.teacher, self.h = counted, sampler, space, teacher, h
        self.draws = split.draws("fit") if split is not None else (teacher.x_init, teacher.end, teacher.cond)
        self.trim, self.calls = trim, 0

    def _numbers(self, theta):
        from ..compiled import pack_numbers

        plan = self.sampler.prepare(self.space.schedule, self.space.grid(theta))
        values: list[float] = []
        packed = pack_numbers((plan.t, plan.s, plan.coef), values)
        return plan, packed, torch.tensor(values, dtype=torch.float64)

    def __call__(self, theta: torch.Tensor):
        from ..compiled import unpack_numbers

        plan, packed, values = self._numbers(theta)
        jac = torch.empty(values.numel(), theta.numel(), dtype=torch.float64)
        for k in range(theta.numel()):
            e = torch.zeros_like(theta)
            e[k] = self.h
            (_, up_packed, up), (_, down_packed, down) = self._numbers(theta + e), self._numbers(theta - e)
            if up_packed != packed or down_packed != packed:
                return None
            jac[:, k] = (up - down) / (2 * self.h)
        leaves = values.clone().requires_grad_(True)
        entries = leaves.unbind(0)
        t, s, coef = unpack_numbers(packed, entries)
        plan.t, plan.s, plan.coef, plan.inplace = t, s, coef, False
        x, end, cond = self.draws
        field = Run(self.counted, cond, check="off")
        with torch.enable_grad():
            loss = run_error(self.sampler, plan, field, x, end, self.trim)
            if not bool(torch.isfinite(loss)):
                return None
            (g,) = torch.autograd.grad(loss, leaves)
        self.calls += field.calls
        return float(loss.detach()), jac.T @ g


def check_tunable(sampler, name: str) -> None:
    """Refuse a sampler whose grid cannot be tuned: a stochastic or an error-controlled one."""
    if sampler.stochastic or sampler.adaptive:
        raise ValueError(f"{name} is {'stochastic' if sampler.stochastic else 'adaptive'}: grids are tuned for "
                         "deterministic fixed-grid samplers (sdeflow list shows them)")


def optimize_grid(denoiser, sampler, nfe: int, x_init: torch.Tensor | None = None, *, teacher: Teacher | None = None,
                  sampler_name: str | None = None, cond: dict | None = None, method: str = "dp+descent",
                  candidates: int = 40, starts: int = 3, iters: int = 60, teacher_steps: int = 300,
                  t_max: float | None = None, gradient: str = "autograd", holdout: float = HOLDOUT,
                  trim: float = TRIM, start: str = "top", teleport=None, t_skip: float | None = None,
                  check: float = 0) -> TunedGrid:
    """A grid for ``denoiser``, ``sampler`` and a budget of ``nfe`` evaluations, fitted on the draws
    ``x_init`` of ``p_{t_max}`` (about 100 are enough; see :func:`~sdeflow.sampling.prior_sample`)
    against the teacher (see the module docstring for ``method``), or against a :class:`Teacher`
    already computed on those draws (give ``teacher`` instead of ``x_init``, ``cond`` and ``t_max``).

    The draws are split (:class:`Split`): the fit sees the first ones, ``holdout`` of them after those
    (a share below 1, a number of draws from 1 up) are held out, and the fit's loss is the endpoint RMS
    error without the ``trim`` share of the worst draws (the few that end in
    another component than the teacher's would decide a plain RMS). The descent runs from the DP grid
    and from the ``starts`` hand grids with the least loss (the landscape has several basins); of the
    results, the one with the least trimmed error on the held-out draws wins. ``gradient``: how the
    descent differentiates the loss, ``"autograd"`` (one run and its backward pass per gradient,
    :class:`GridGradient`; checked once against central differences along its own direction, and
    replaced by them with a warning if the model's output is not differentiable in time) or
    ``"differences"`` (``2n`` runs).

    ``start`` (see :data:`STARTS`): where the grid begins. Below the top (``"leading"``, or
    ``"teleport"`` at ``t_skip`` with the data's Gaussian ``teleport``; ``t_skip`` defaults to
    :meth:`~sdeflow.teleport.Teleport.choose_time`'s), the run starts from the top's draws carried
    there, is still judged against the teacher's solve from the top, and its grid is fitted by the
    descent from the hand grids (the DP's candidate states are the teacher's, from the top).
    ``"search"`` fits every start (teleport only with ``teleport``) and keeps the best on the held-out
    draws: the start is part of the search space. With a teleport, the draws ``x_init`` are read as
    the noise ``z = x_init / prior std`` and every run, the teacher's included, starts from the
    Gaussian's own state ``alpha_1 mu + C_1^{1/2} z`` at the top (where the teleport's map begins),
    so that every start is judged against the exact map of the same noise.

    The fit is kept only if it beats the best hand grid from the top on the held-out draws, in the
    trimmed error and in the plain RMS, and is no worse than that grid in the plain RMS over all the
    draws (the trimmed loss cannot see a fit that sends a few more of its fitting draws to another
    component: :func:`~.draws.refusal`); otherwise that hand grid is returned (``method =
    "hand:<name>"``), with a warning that says so. Those draws also selected the fit, which flatters it;
    ``check`` (a share of the draws below 1, a number of them from 1 up; none by default) keeps the
    last draws apart from fitting and selection, and the fit must beat that hand grid there too, in
    the trimmed error and in the plain RMS.

    Returns a :class:`TunedGrid` whose ``loss`` and ``hand`` are the held-out trimmed errors of the
    returned grid and of every hand grid, ``heldout`` the returned grid's held-out RMS, ``start`` its
    start, and ``cost_nfe`` the cost of fitting in model evaluations (each on the whole batch of
    draws), including the teacher's when it is computed here (a shared ``teacher`` is paid once, by
    its caller: ``teacher.calls``)."""
    if method not in METHODS:
        raise ValueError(f"unknown tuning method {method!r}; allowed: {', '.join(METHODS)}")
    if gradient not in GRADIENTS:
        raise ValueError(f"unknown gradient {gradient!r}; allowed: {', '.join(GRADIENTS)}")
    label = sampler_name or type(sampler).__name__
    check_tunable(sampler, label)
    if candidates < 4 or starts < 0:
        raise ValueError(f"need candidates >= 4 and starts >= 0, got {candidates} and {starts}")
    check_trim(trim)
    if start not in (*STARTS, "search"):
        raise ValueError(f"unknown start {start!r}; allowed: {', '.join(STARTS)}, search")
    if start == "teleport" and teleport is None:
        raise ValueError("start='teleport' needs the data's Gaussian: pass teleport= (a sdeflow.teleport.Teleport)")
    if start != "top" and method == "dp":
        raise ValueError(f"start={start!r} is fitted by the descent: use method 'descent' or 'dp+descent'")
    if (x_init is None) == (teacher is None):
        raise ValueError("give the draws x_init or a Teacher computed on them, not both")
    if teleport is not None and start in ("teleport", "search") and teacher is not None:
        raise ValueError("a teleport start is fitted on the draws x_init (its teacher starts from the Gaussian's own "
                         "state at the top): give x_init, not teacher")
    draws = teacher.x_init if teacher is not None else x_init
    Split.fit_count(draws.shape[0], holdout, check)  # refused now, before the teacher's solve
    sch = denoiser.schedule
    n = steps_for(sampler, sch, nfe)
    t_max = teacher.t_max if teacher is not None else t_max
    space = GridSpace(sch, n, t_max)
    if start != "top" and abs(space.t_max - grids.start_time(sch)) > 1e-12:
        raise ValueError(f"start={start!r} begins below the top and is judged from there: the draws must be the "
                         f"prior's at the top (t_max = {grids.start_time(sch):.6g}), got t_max = {space.t_max:.6g}")
    want_dp = method in ("dp", "dp+descent") and start in ("top", "search")
    if teleport is not None and start in ("teleport", "search"):
        # every start is judged against the exact map of one noise z: from the top, the Gaussian's own state
        # alpha_1 mu + C_1^(1/2) z there (which the teleport's map continues exactly), z = x_init / prior std
        from ..sampling import prior_std

        draws = teleport.start(draws.to(torch.float64) / prior_std(sch, space.t_max), sch, space.t_max).to(draws.dtype)
    teacher_calls = 0
    if teacher is None or (want_dp and teacher.times is None):
        cond = teacher.cond if teacher is not None else cond
        teacher = Teacher(denoiser, draws, cond=cond, t_max=space.t_max, steps=teacher_steps,
                          times=candidate_times(space, candidates) if want_dp else None)
        teacher_calls = teacher.calls
    split = Split(teacher, holdout, check=check)
    counted = CountedDenoiser(denoiser, teacher.x_init.dtype)
    hands = hand_grids(sch, n, space.t_max)
    held = {name: split.held_out(counted, sampler, ts, trim) for name, ts in hands.items()}
    options = [start] if start != "search" else ["top", "leading"] + (["teleport"] if teleport is not None else [])
    if "teleport" in options and t_skip is None:
        from ..sampling import prior_std

        z = split.draws("fit")[0].to(torch.float64) / prior_std(sch, space.t_max)
        t_skip, _ = teleport.choose_time(counted, z, cond=split.draws("fit")[2])
    ts, best, slope, kept, chosen_split = None, (math.inf, math.inf), None, method, split
    for option in options:
        t_s, x_s = start_state(option, sch, teacher.x_init, n, teleport, t_skip, top=space.t_max)
        if option != "top" and t_s >= space.t_max:  # no room below the top (one step, or no skip): the top's fit
            continue
        try:
            below = GridSpace(sch, n, t_s)
        except ValueError:  # a skip down to the smallest time leaves no grid to fit (Gaussian data): give t_skip
            continue
        option_split = Split(teacher, holdout, x_s, check)
        fitted, score, used = _fit_from(counted, sampler, below, teacher, option_split,
                                        method if option == "top" else "descent", starts, iters, gradient, trim, label)
        slope = used or slope
        if score < best:
            ts, best, chosen, chosen_split = fitted, score, option, option_split
    hand_best = min((v, k) for k, v in held.items()) if held else None
    why = None if ts is not None else "gives no finite result"
    if ts is not None and hand_best is not None:
        hand_held, name = hand_best
        why = refusal(best, hand_held, lambda part: chosen_split.held_out(counted, sampler, ts, trim, part),
                      lambda part: split.held_out(counted, sampler, hands[name], trim, part), split.n_check)
        if why is not None:
            why = f"is no better than the {name} hand grid {why}"
    if why is not None:
        if hand_best is None:
            raise ValueError("no hand grid and no fit gives a finite result")
        best, name = hand_best
        ts, kept, chosen = hands[name], f"hand:{name}", "top"
        warnings.warn(f"the {method} grid for {label} at NFE {nfe} {why}: the {name} grid is returned", stacklevel=2)
    return TunedGrid(ts.tolist(), label, sampler.prepare(sch, ts).nfe, kept, best[0], {k: v[0] for k, v in held.items()},
                     counted.calls + teacher_calls, teacher.x_init.shape[0], heldout=best[1],
                     cost_grad=slope.calls if slope else 0, start=chosen)


def _fit_from(counted, sampler, space: GridSpace, teacher: Teacher, split: Split, method: str, starts: int, iters: int,
              gradient: str, trim: float, label: str):
    """The fit of :func:`optimize_grid` from ``space.t_max`` on the states of ``split``: ``(grid,
    (held-out trimmed error, held-out RMS), gradient used)``; the grid ``None`` where nothing is finite."""
    sch, n = space.schedule, space.n
    fit_draws = split.draws("fit")

    def loss_of(ts):
        return endpoint_loss(counted, sampler, ts, *fit_draws, trim=trim)

    hands = hand_grids(sch, n, space.t_max)
    on_fit = {name: loss_of(ts) for name, ts in hands.items()}
    finite = sorted((v, k) for k, v in on_fit.items() if math.isfinite(v))
    begin = [space.grid(space.logits(hands[k])) for _, k in finite[:starts]] if method != "dp" else []
    if method in ("dp", "dp+descent"):
        begin.insert(0, dp_grid(counted, sampler, space, teacher, split.parts["fit"], trim))
    if not begin:
        begin = [space.grid(space.logits(hands[k])) for _, k in finite[:1]]
    if not begin:
        return None, (math.inf, math.inf), None
    slope = GridGradient(counted, sampler, space, teacher, split=split, trim=trim) \
        if gradient == "autograd" and method != "dp" and n > 1 else None
    if slope is not None and not _agrees(slope, lambda th: loss_of(space.grid(th)), space.logits(begin[0])):
        warnings.warn(f"the teacher loss's gradient through {label}'s run disagrees with central differences (is the "
                      "model's output differentiable in its time input?): the grid is fitted with central differences",
                      stacklevel=3)
        slope = None
    ts, best = None, (math.inf, math.inf)
    for first in begin:  # the DP grid (kept as it is for "dp") and the best hand grids, each refined
        if method != "dp" and n > 1:
            theta, _, _ = descend(lambda th: loss_of(space.grid(th)), space.logits(first), iters=iters, gradient=slope)
            first = space.grid(theta)
        now = split.held_out(counted, sampler, first, trim)
        if now < best:
            ts, best = first, now
    return ts, best, slope


def _agrees(slope: GridGradient, loss, theta: torch.Tensor) -> bool:
    """Whether ``slope``'s gradient at ``theta`` matches central differences of ``loss`` along it
    within 5%: the check that the model's time input carries the gradient. The differences are taken
    at steps ``e`` and ``e/2`` for ``e`` = 1e-4, 1e-3, 1e-2, and extrapolated (Richardson), since a
    curved loss needs small steps and float32 states make small steps noisy. True where ``slope``
    cannot answer (it then defers to differences on its own)."""
    answer = slope(theta)
    if answer is None or not bool(torch.isfinite(answer[1]).all()) or float(answer[1].norm()) == 0.0:
        return True
    d = answer[1] / answer[1].norm()
    along = float(answer[1] @ d)

    def differences(eps):
        return (loss(theta + eps * d) - loss(theta - eps * d)) / (2 * eps)

    for eps in (1e-4, 1e-3, 1e-2):
        coarse, fine = differences(eps), differences(eps / 2)
        if min(abs(v - along) for v in (coarse, fine, (4 * fine - coarse) / 3)) <= 0.05 * abs(along):
            return True
    return False

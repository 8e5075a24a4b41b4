"""The default chosen for one model: every candidate sampler on every hand grid of its schedule family,
run at one budget on a pilot batch of prior draws and scored against the teacher's solve of the same
draws; the least error wins (see :func:`choose_configuration`).

No fixed table of samplers and grids is within 1.5x of the best configuration on 90% of problems at
most budgets (``docs/benchmarks/defaults.md``): the best grid depends on the scales of the data. A
pilot run measures that for the model at hand, at the cost of a teacher solve and one run of each
candidate on the pilot draws.
"""

from __future__ import annotations

import math

import torch

from ..grids import GRIDS, start_time
from ..names import lookup
from ..sampling import sample
from ..samplers import steps_for_nfe
from ..samplers.names import CANDIDATE_GRIDS, SAMPLERS, candidate_samplers, default_sampling, family
from .draws import CountedDenoiser, Teacher, cond_rows, draw_errors, squared_errors
from .fit import check_tunable
from .store import TunedGrid


#: ``choose_configuration``'s preference for sdeflow's default (1: none). Chosen on the choosing
#: problems of ``benchmarks/families.py`` by ``benchmarks/defaults.py`` (a larger preference never met
#: the target in more cells there).
KEEP_DEFAULT = 1.0


def default_key(schedule, nfe: int) -> str:
    """sdeflow's default at ``nfe`` as a candidate's key, ``"sampler (grid)"``."""
    return "{} ({})".format(*default_sampling(schedule, nfe))


def _grid(sampler, schedule, gname: str, nfe: int) -> torch.Tensor:
    """The ``gname`` grid of the largest step count within ``nfe`` evaluations, starting where sdeflow
    samples from (a grid that starts elsewhere, ``uniform`` on a flow, is moved there); ``ValueError``
    for a grid the schedule does not take (a discrete spacing on a continuous schedule)."""
    t_max, n = start_time(schedule), steps_for_nfe(sampler, schedule, gname, nfe)
    ts = GRIDS[gname](n, schedule)
    return ts if abs(float(ts[0]) - t_max) <= 1e-12 else GRIDS[gname](n, schedule, t_max=t_max)


def candidates(schedule, nfe: int, samplers=None) -> dict[str, tuple[str, str, object, torch.Tensor]]:
    """``{"sampler (grid)": (sampler name, grid name, sampler, ts)}``: every candidate that spends at most
    ``nfe`` evaluations on ``schedule`` (its largest step count within the budget), sdeflow's default
    among them; every grid starts where sdeflow samples from (:func:`~sdeflow.grids.start_time`)."""
    names = list(candidate_samplers(nfe) if samplers is None else samplers)
    pairs = [default_sampling(schedule, nfe)] + [(s, g) for s in names for g in CANDIDATE_GRIDS[family(schedule)]]
    out = {}
    for sname, gname in pairs:
        key = f"{sname} ({gname})"
        if key in out:
            continue
        sampler = lookup(SAMPLERS, "sampler", sname)()
        check_tunable(sampler, sname)
        try:
            ts = _grid(sampler, schedule, gname, nfe)
        except ValueError:
            continue
        if sampler.prepare(schedule, ts).nfe <= nfe:
            out[key] = (sname, gname, sampler, ts)
    return out


def screen_order(denoiser, nfe: int, x_init: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
    """The indices of the draws ``x_init`` (of the prior at the top), the most telling first: sdeflow's
    default configuration at ``nfe`` evaluations and the same sampler and grid at twice the budget are
    run on every draw, and the draws where they disagree most (where the run's own error is largest:
    draws near the border of two components) come first; a draw where either run is not finite first
    of all. Costs about ``3 nfe`` evaluations on the batch."""
    sch = denoiser.schedule
    sname, gname = default_sampling(sch, nfe)
    sampler = SAMPLERS[sname]()
    with torch.no_grad():
        ends = [sample(denoiser, sampler, _grid(sampler, sch, gname, budget), x_init, cond=cond, check_finite=False).x
                for budget in (nfe, 2 * nfe)]
    gap = (ends[0] - ends[1]).to(torch.float64).flatten(1).pow(2).sum(1)
    return torch.argsort(torch.nan_to_num(gap, nan=math.inf), descending=True, stable=True)


def stratified_mean(top: torch.Tensor, rest: torch.Tensor, pool: int) -> torch.Tensor:
    """The pool's mean of per-draw values (along the last dimension) estimated from all of its
    ``top.shape[-1]`` most telling draws and a random sample ``rest`` of the others, each stratum weighted
    by its share of the ``pool`` draws (unbiased)."""
    k, m = top.shape[-1], rest.shape[-1]
    if k + m > pool or (m == 0 and k < pool):
        raise ValueError(f"{k} screened and {m} random draws do not sample a pool of {pool}")
    rest_sum = rest.sum(-1) * ((pool - k) / m) if m else 0.0
    return (top.sum(-1) + rest_sum) / pool


#: A verified pilot (``choose_configuration(verify=...)``): the random pilot's size, and how many of its
#: candidates least in error are run on the whole pool. Fixed before ``benchmarks/pilot_verify.py``
#: measured them.
VERIFY_PILOT, FINALISTS = 32, 4


def spread_order(ends: torch.Tensor) -> torch.Tensor:
    """The draws (the second dimension of ``ends``: runs x draws x ...) ordered by how far the runs
    spread on them, largest first (the squared distance of the farthest run from their mean); a draw
    where a run is not finite first of all."""
    flat = ends.to(torch.float64).flatten(2)
    spread = (flat - flat.mean(0)).pow(2).sum(-1).amax(0)
    return torch.argsort(torch.nan_to_num(spread, nan=math.inf), descending=True, stable=True)


def verified(denoiser, counted, options: dict, finalists: list[str], errors: dict, pool_x: torch.Tensor,
             pool_cond: dict | None, piloted: torch.Tensor, checked: int, teacher_steps: int) -> tuple[dict, int]:
    """The ``finalists`` (keys of ``options``) run on the whole pool ``pool_x``; the teacher runs on the
    ``checked`` draws where they spread most (where one of them ends in another component than the
    others), and each finalist's mean square over the pool is estimated from those and its per-draw
    squared errors on the pilot's other draws (``errors``, on the pool's draws ``piloted``), each stratum
    weighted by its share (:func:`stratified_mean`). Returns ``{finalist: RMS}`` and the teacher's
    evaluations."""
    pool = pool_x.shape[0]
    with torch.no_grad():
        ends = torch.stack([sample(counted, options[k][2], options[k][3], pool_x, cond=pool_cond, check_finite=False).x
                            for k in finalists])
    rows = spread_order(ends)[:checked]
    teacher = Teacher(denoiser, pool_x[rows], cond=cond_rows(pool_cond, rows, pool), steps=teacher_steps)
    rest = ~torch.isin(piloted, rows)
    out = {}
    for i, k in enumerate(finalists):
        mean = stratified_mean(squared_errors(ends[i, rows], teacher.end), errors[k][rest], pool)
        out[k] = float(mean.sqrt()) if bool(torch.isfinite(mean)) else math.inf
    return out, teacher.calls


def choose_configuration(denoiser, nfe: int, x_init: torch.Tensor | None = None, *, teacher: Teacher | None = None,
                         cond: dict | None = None, samplers=None, teacher_steps: int = 300,
                         keep_default: float = KEEP_DEFAULT, pilot: int | None = None, seed: int = 0,
                         verify: int | None = None) -> TunedGrid:
    """The sampler and hand grid with the least endpoint RMS error at a budget of ``nfe`` evaluations on
    the pilot draws ``x_init`` of the prior at the top of the schedule (32 are enough; see
    :func:`~sdeflow.sampling.prior_sample`), against the teacher's many-step solve of the same draws (or
    a :class:`Teacher` already computed on them: give ``teacher`` instead of ``x_init`` and ``cond``).

    The candidates are ``samplers`` (default :func:`~sdeflow.samplers.names.candidate_samplers`: the
    strongest deterministic samplers of every family, single-step ones included; from 50 evaluations on,
    those of order three and more) on every grid of
    :data:`~sdeflow.samplers.names.CANDIDATE_GRIDS` for the schedule's family, each at its largest step
    count within the budget. sdeflow's default at ``nfe`` is kept unless a candidate's error is below
    ``1 / keep_default`` of it.

    ``pilot``: a screened pilot of that many draws out of the larger pool ``x_init``. sdeflow's default
    runs on the whole pool at the budget and at twice it (:func:`screen_order`); the teacher and the
    candidates then run on the ``pilot // 2`` draws where the two disagree most and on a random sample
    (``seed``) of the others, and each candidate's RMS over the pool is estimated with each stratum
    weighted by its share of the pool (:func:`stratified_mean`). On mixtures of separated components the
    few draws that end in another component decide the RMS, and a random batch rarely holds them. From
    a pool of 512 the screened pick is better at NFE 6-12 and worse at NFE 30 than a random pilot's
    (``docs/benchmarks/pilot_screen.md``).

    ``verify``: a verified pilot, with ``x_init`` a larger pool (a few hundred draws). The candidates run
    on a random pilot of :data:`VERIFY_PILOT` draws of the pool (``seed``); the :data:`FINALISTS` least
    in error there then run on the whole pool, the teacher on the ``verify`` draws where they spread most
    (16 is enough), and the finalist with the least RMS over the pool, estimated stratum by stratum
    (:func:`verified`), wins. A configuration that sends one draw in a hundred to another component is
    seen there, where a pilot of 32 rarely sees it (``docs/benchmarks/pilot_verify.md``); it costs the
    finalists' runs on the pool and the teacher on ``verify`` more draws.

    Returns a :class:`TunedGrid` with ``method = "choice:<grid>"``: the chosen sampler, its grid ``ts``,
    the budget ``nfe`` (a single-step sampler may spend fewer), its RMS (``loss`` and ``heldout``),
    ``hand`` the RMS of every candidate (keyed ``"sampler (grid)"``) and ``cost_nfe`` the evaluations
    spent (each on the whole batch), the teacher's included when it is computed here.
    ``sdeflow sample --grid tuned`` runs it once stored (:func:`~sdeflow.tuning.save_tuned`)."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be an integer >= 1, got {nfe!r}")
    if not keep_default >= 1.0:
        raise ValueError(f"keep_default must be >= 1 (1: no preference for the default), got {keep_default}")
    if (x_init is None) == (teacher is None):
        raise ValueError("give the pilot draws x_init or a Teacher computed on them, not both")
    if teacher_steps < 1:
        raise ValueError(f"teacher_steps must be >= 1, got {teacher_steps}")
    if verify is not None:
        if pilot is not None or x_init is None:
            raise ValueError("a verified pilot (verify=) draws its pilot from the pool x_init and checks its finalists "
                             "there: give x_init, and not pilot= (a screened pilot) as well")
        if isinstance(verify, bool) or not isinstance(verify, int) or verify < 1:
            raise ValueError(f"verify must be an integer >= 1 (the pool's draws checked), got {verify!r}")
        if x_init.shape[0] <= VERIFY_PILOT + verify:
            raise ValueError(f"a verified pilot checks {verify} draws beside a pilot of {VERIFY_PILOT}: the pool x_init "
                             f"needs more than {VERIFY_PILOT + verify} draws (a few hundred), got {x_init.shape[0]}")
    if pilot is not None:
        if x_init is None:
            raise ValueError("a screened pilot (pilot=) picks its draws from the pool x_init: give x_init, not a teacher")
        if isinstance(pilot, bool) or not isinstance(pilot, int) or not 2 <= pilot <= x_init.shape[0]:
            raise ValueError(f"pilot must be an integer from 2 to the {x_init.shape[0]} draws of x_init, got {pilot!r}")
    sch = denoiser.schedule
    if teacher is not None and abs(teacher.t_max - start_time(sch)) > 1e-9:
        raise ValueError(f"the pilot draws are at t = {teacher.t_max:.6g}: draw them at the top of the schedule, "
                         f"t = {start_time(sch):.6g}")
    options = candidates(sch, nfe, samplers)  # refused here (unknown or stochastic samplers) before any evaluation
    if not options:
        raise ValueError(f"no candidate sampler runs within {nfe} evaluations on this schedule")
    draws = teacher.x_init if teacher is not None else x_init
    counted = CountedDenoiser(denoiser, draws.dtype)
    pool, screened = draws.shape[0], 0
    if pilot is not None and pilot < pool:
        order = screen_order(counted, nfe, x_init, cond)
        screened, rest = pilot // 2, order[pilot // 2:]
        picked = torch.cat([order[:screened], rest[torch.randperm(rest.numel(), generator=torch.Generator().manual_seed(seed))
                                                   [:pilot - screened]]])
        x_init, cond = x_init[picked], cond_rows(cond, picked, pool)
    if verify is not None:
        pool_x, pool_cond = x_init, cond
        piloted = torch.randperm(pool, generator=torch.Generator().manual_seed(seed))[:VERIFY_PILOT]
        x_init, cond = x_init[piloted], cond_rows(cond, piloted, pool)
    teacher_calls = 0
    if teacher is None:
        teacher = Teacher(denoiser, x_init, cond=cond, steps=max(teacher_steps, 3 * nfe))
        teacher_calls = teacher.calls

    errors = {key: draw_errors(counted, sampler, ts, teacher.x_init, teacher.end, teacher.cond)
              for key, (_, _, sampler, ts) in options.items()}
    means = {key: stratified_mean(e[:screened], e[screened:], pool) if screened else e.mean() for key, e in errors.items()}
    rms = {key: float(m.sqrt()) if bool(torch.isfinite(m)) else math.inf for key, m in means.items()}
    running = rms  # the candidates the pick is made among, by these errors
    if verify is not None and math.isfinite(min(rms.values())):
        finalists = sorted((k for k in rms if math.isfinite(rms[k])), key=rms.get)[:FINALISTS]
        running, calls = verified(denoiser, counted, options, finalists, errors, pool_x, pool_cond, piloted, verify,
                                  max(teacher_steps, 3 * nfe))
        rms, teacher_calls = {**rms, **running}, teacher_calls + calls
    best = min(running, key=running.get)
    if not math.isfinite(rms[best]):
        raise ValueError("no candidate gives a finite result on the pilot draws")
    default = default_key(sch, nfe)
    if running.get(default, math.inf) <= keep_default * rms[best]:
        best = default
    sname, gname, sampler, ts = options[best]
    return TunedGrid(ts.tolist(), sname, nfe, f"choice:{gname}", rms[best], rms, counted.calls + teacher_calls,
                     teacher.x_init.shape[0], heldout=rms[best])


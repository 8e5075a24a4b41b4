"""Problem families: random exact Gaussian-mixture problems, and every sdeflow ODE configuration's
error on them at every budget from 1 to 100 evaluations.

A problem is drawn from its seed: dimension log-uniform in 2..3072, 1-16 components with log-normal
weights, means apart by a random multiple (0.5-8) of the components' spread, covariances with a
diagonal spectrum of random condition number (1-1000) plus a random low-rank part (rank 0-8), and a
random overall scale (0.25-2, around the EDM preconditioning's sigma_data = 0.5). Each problem runs
under the three processes of the ODE benchmark (a 1000-step DDPM eps model, an EDM-preconditioned x0
model, a rectified-flow velocity model); the networks are the exact fields in those
parameterizations. Every candidate sampler on every grid of its family runs at each budget (its
largest step count within the budget), in float64 from the same draws of ``p_{t0}`` at the grid's
first time, and is scored by the RMS distance to the exact probability-flow solution from that start
(``common.Shared``), and by that distance's RMS without the worst 1% of the draws and its median.

Seeds below 1000 are the problems defaults are chosen on; seeds from 1000 on are the validation
problems, never used for choosing. Results go to ``docs/benchmarks/families.json`` one problem at a
time (atomically), so an interrupted run resumes where it stopped.

    python benchmarks/families.py --split choose --count 24      # the choosing problems
    python benchmarks/families.py --split validate --count 24    # the validation problems
    python benchmarks/families.py --shard 0/2 ...                # every other problem (two processes)
    python benchmarks/families.py ... --moved    # the same draws on the grids the tuner moves (see moved_grids)
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import PROCESSES, Problem, Shared, sdeflow_denoiser, shard  # noqa: E402

from sdeflow import analytic, grids, sample  # noqa: E402
from sdeflow.analytic.covariance import LowRankPlusDiagonal  # noqa: E402
from sdeflow.registry import GRIDS, SAMPLERS  # noqa: E402
from sdeflow.samplers import steps_for_nfe  # noqa: E402
from sdeflow.samplers.names import CANDIDATE_GRIDS, CANDIDATE_SAMPLERS, HIGH_BUDGET, HIGH_ORDER, family  # noqa: E402
from sdeflow.tuning.draws import squared_errors, trimmed_rms  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "families.json")
BUDGETS = [1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 50, 100]
SPLITS = {"choose": 0, "validate": 1000}
#: The sdeflow configurations compared: ``sdeflow.samplers.names.CANDIDATE_SAMPLERS`` on every grid of
#: ``CANDIDATE_GRIDS`` that suits the process's schedule family.
FAMILY_OF = {"index": "vp", "edm": "sigma", "t": "flow"}
SCHEDULE_OF = {FAMILY_OF[p.time_input]: p.schedule for p in PROCESSES}
#: Added to a problem's seed for the draws of a pilot measurement (disjoint from the benchmark's).
PILOT_SEED = 7919
PILOT_OUT = OUT.replace("families.json", "families_pilot.json")
#: Added to a problem's seed for the draws of a measurement on the data's Gaussian, and where it goes.
GAUSSIAN_SEED = 3000
GAUSSIAN_OUT = OUT.replace("families.json", "families_gaussian.json")
#: Added to a problem's seed for the data a Gaussian is fitted to (``--gaussian --fit N``), and where it goes.
FIT_SEED = 5000
FIT_OUT = OUT.replace("families.json", "families_gaussian_fit{}.json")
#: The finer measurement (``--samples 512 --max-dim 128``).
FINE_OUT = OUT.replace("families.json", "families_fine.json")
#: What a problem's record holds per configuration and budget, over its draws: the RMS endpoint error,
#: the RMS without the worst ``TAIL`` share of the draws (``floor(TAIL * draws)`` of them: none below 100
#: draws), and the median error.
MEASURES = ("errors", "trimmed", "medians")
TAIL = 0.01


def log_uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * float(torch.rand((), generator=g, dtype=torch.float64)))


def draw_problem(seed: int, **fixed) -> tuple[Problem, dict]:
    """The problem of ``seed`` and the parameters it was drawn with. ``fixed`` sets some of them
    (``dim``, ``components``, ``separation``, ``condition``, ``scale``, ``rank``, ``weight_spread``);
    the others are those of ``seed``, as drawn without it."""
    unknown = set(fixed) - {"dim", "components", "separation", "condition", "scale", "rank", "weight_spread"}
    if unknown:
        raise ValueError(f"draw_problem cannot fix {sorted(unknown)}")
    g = torch.Generator().manual_seed(seed)
    dim = int(round(log_uniform(g, 2, 3072)))
    k = int(round(log_uniform(g, 1, 16)))
    sep, cond, scale = log_uniform(g, 0.5, 8.0), log_uniform(g, 1.0, 1000.0), log_uniform(g, 0.25, 2.0)
    rank = int(torch.randint(0, min(8, dim - 1) + 1, (), generator=g))
    weight_spread = 1.5 * float(torch.rand((), generator=g, dtype=torch.float64))
    dim, k, sep = fixed.get("dim", dim), fixed.get("components", k), fixed.get("separation", sep)
    cond, scale, rank = fixed.get("condition", cond), fixed.get("scale", scale), fixed.get("rank", rank)
    weight_spread = fixed.get("weight_spread", weight_spread)
    weights = torch.exp(weight_spread * torch.randn(k, generator=g, dtype=torch.float64))
    # per-coordinate variances between scale^2 / cond and scale^2, log-uniform
    var = scale ** 2 * torch.exp(-math.log(cond) * torch.rand(k, dim, generator=g, dtype=torch.float64))
    spread = float(var.mean().sqrt())
    means = sep * spread * torch.randn(k, dim, generator=g, dtype=torch.float64) / math.sqrt(2)
    if rank:
        # a few strong directions: each carries 0.5-3x the diagonal's total variance over `rank`
        amp = torch.sqrt(var.sum(1, keepdim=True) / rank * (0.5 + 2.5 * torch.rand(k, rank, generator=g, dtype=torch.float64)))
        u = torch.linalg.qr(torch.randn(k, dim, rank, generator=g, dtype=torch.float64))[0] * amp[:, None, :]
        cov = LowRankPlusDiagonal(var, u)
    else:
        cov = var
    num = int(min(128, max(16, 4096 // dim)))
    params = {"seed": seed, "dim": dim, "components": k, "separation": sep, "condition": cond, "scale": scale,
              "rank": rank, "weight_spread": weight_spread, "samples": num}
    return Problem(f"family problem {seed}", analytic.GaussianMixture(weights, means, cov), (dim,), num), params


def configurations(process):
    return [(s, gname) for s in CANDIDATE_SAMPLERS for gname in CANDIDATE_GRIDS[FAMILY_OF[process.time_input]]]


def moved_grids(schedule) -> list[str]:
    """The candidate grids that start above where sdeflow samples from (``grids.start_time``: 0.999 on a
    flow, whose logSNR is infinite at 1): ``uniform`` and ``quadratic`` on a flow. ``sdeflow tune --method
    choose`` runs them moved to that start (:func:`sdeflow.tuning.choose.candidates`), a run of its own."""
    top = grids.start_time(schedule)
    return [g for g in CANDIDATE_GRIDS[family(schedule)] if float(GRIDS[g](4, schedule)[0]) > top + 1e-12]


#: Per schedule family, the grids the tuner moves.
MOVED = {fam: moved_grids(schedule) for fam, schedule in SCHEDULE_OF.items()}


def moved_name(config: str, family: str) -> str:
    """The key under which :func:`measure` (``moved=True``) stores the run of ``config`` (``"sampler (grid)"``)
    that ``sdeflow tune --method choose`` makes: ``"sampler (grid from 0.999)"`` for a moved grid."""
    sname, gname = config[:-1].split(" (")
    return f"{sname} ({gname} from {grids.start_time(SCHEDULE_OF[family]):g})" if gname in MOVED[family] else config


def measure(seed: int, budgets=BUDGETS, pilot: int | None = None, samples: int | None = None,
            gaussian: bool = False, fit: int | None = None, moved: bool = False) -> dict:
    """Every configuration's error (each of :data:`MEASURES`) at every budget, per process, on the problem of ``seed``.
    ``pilot``: measure on that many fresh draws instead (another draw seed than the benchmark's):
    what a pilot run on a model sees before it picks a configuration. ``samples``: measure on that
    many of the benchmark's draws instead of the problem's own count (a finer measurement).
    ``gaussian``: measure on the Gaussian with the problem's exact mean and covariance instead (other
    draws): what a choice made on the data's mean and covariance alone, without the model, sees.
    ``fit``: with ``gaussian``, the Gaussian fitted to that many samples of the data instead, as
    ``sdeflow tune --on gaussian`` fits it to the training data (:func:`~sdeflow.tuning.gaussian.fit_gaussian`;
    the same draws of ``p_{t0}`` as the exact Gaussian's). ``moved``: only the grids of :func:`moved_grids`,
    moved to where sdeflow samples from, as ``sdeflow tune --method choose`` runs them (the same draws;
    keys of :func:`moved_name`; a process without such grids is left out)."""
    if fit and not gaussian:
        raise ValueError("fit= is the number of data samples a Gaussian is fitted to: it needs gaussian=True")
    problem, params = draw_problem(seed)
    if pilot or samples or gaussian:
        mixture = problem.mixture
        if gaussian:
            mixture = analytic.gaussian(*(data_moments(mixture, fit, seed + FIT_SEED) if fit else
                                          (mixture.mean(), mixture.covariance())))
        problem = Problem(problem.name, mixture, problem.shape, pilot or samples or problem.num)
        params = {**params, "samples": problem.num, **({"fitted_to": fit} if fit else {})}
    out = {"params": params, "processes": {}}
    for process in PROCESSES:
        shared = Shared(problem, process, seed=seed + (PILOT_SEED if pilot else GAUSSIAN_SEED if gaussian else 0))
        den = sdeflow_denoiser(problem, process)
        sch = process.schedule
        configs = [(sn, g) for sn, g in configurations(process) if not moved or g in MOVED[FAMILY_OF[process.time_input]]]
        if not configs:
            continue
        tables = [[[None] * len(budgets) for _ in configs] for _ in MEASURES]
        for i, (sname, gname) in enumerate(configs):
            sampler = SAMPLERS[sname]()
            for j, nfe in enumerate(budgets):
                if nfe >= HIGH_BUDGET and sname not in HIGH_ORDER:
                    continue
                n = steps_for_nfe(sampler, sch, gname, nfe)
                ts = GRIDS[gname](n, sch, **({"t_max": grids.start_time(sch)} if moved else {}))
                if sampler.prepare(sch, ts).nfe > nfe:  # not reachable within this budget
                    continue
                x = sample(den, sampler, ts, shared.x_init(float(ts[0])), check_finite=False).x
                sq = squared_errors(x, shared.reference(float(ts[0]), 0.0, steps=400))
                for table, value in zip(tables, (sq.mean().sqrt(), trimmed_rms(sq, TAIL), sq.median().sqrt())):
                    table[i][j] = float(value) if math.isfinite(float(value)) else math.inf
        out["processes"][FAMILY_OF[process.time_input]] = {
            "process": process.name, "configs": [moved_name(f"{s} ({gname})", FAMILY_OF[process.time_input]) if moved else f"{s} ({gname})"
                                                 for s, gname in configs],
            **dict(zip(MEASURES, tables))}
    return out


def data_moments(mixture, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and covariance of the Gaussian that ``sdeflow tune --on gaussian`` fits to ``n`` samples
    of ``mixture`` (drawn with ``seed``)."""
    from sdeflow.tuning.gaussian import fit_gaussian

    g = fit_gaussian(mixture.sample(n, torch.Generator().manual_seed(seed)))
    return g.mean, (g.basis * g.variances) @ g.basis.T


def load(path: str = OUT) -> dict:
    if not os.path.exists(path):
        return {"budgets": BUDGETS, "problems": {}}
    with open(path) as f:
        return json.load(f)


def moved_path(path: str) -> str:
    """Where ``--moved`` keeps the runs of the moved grids on the draws of the measurement at ``path``."""
    return path[:-len(".json")] + "_moved.json"


def joined(path: str, seeds=None) -> dict:
    """The measurement at ``path`` with its moved grids' runs (:func:`moved_path`, ``--moved``: the same
    draws) joined to each process's configurations, beside the grids as ``sdeflow sample --grid`` runs
    them: a pick is judged against every configuration sdeflow runs, and a pilot picks among the tuner's
    (:func:`tuner_candidates`). ``seeds``: the problems that need them (all of ``path``'s by default)."""
    data = load(path)
    if not os.path.exists(moved_path(path)):
        return data
    moved = load(moved_path(path))["problems"]
    if missing := sorted(set(data["problems"] if seeds is None else seeds) - set(moved), key=int):
        sys.exit(f"{moved_path(path)} lacks problems {', '.join(missing)}: measure them with the command that "
                 f"measured {os.path.basename(path)} and --moved")
    for seed in set(moved) & set(data["problems"]):
        for fam, record in moved[seed]["processes"].items():
            mine = data["problems"][seed]["processes"][fam]
            for key in ("configs", *(m for m in MEASURES if m in mine)):  # older measurements hold the RMS alone
                mine[key] = mine[key] + record[key]
    return data


def plain_name(config: str) -> str:
    """The key of the run from the grid's own start that a :func:`moved_name` key moves (itself otherwise)."""
    return config.split(" from ")[0] + ")" if " from " in config else config


def nameable(config: str) -> bool:
    """Whether a table of defaults (``sdeflow sample``'s grid names) can name ``config``: not a moved run."""
    return plain_name(config) == config


def tuner_candidates(errors: dict, family: str) -> dict:
    """``errors`` (``{config: error}``) less the runs from the top of the grids the tuner moves, where
    their moved runs are there: the candidates ``sdeflow tune --method choose`` runs."""
    return {c: e for c, e in errors.items() if moved_name(c, family) == c or moved_name(c, family) not in errors}


def load_fine() -> dict:
    """The finer measurement (``families_fine.json``) joined with its moved grids' runs
    (``families_fine_moved.json``): the best configuration is the best of every configuration sdeflow
    runs, the tuner's included."""
    return joined(FINE_OUT)


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile (the smallest value with at least ``q`` of the values at or below it)."""
    v = sorted(values)
    return v[max(0, math.ceil(q * len(v)) - 1)]


def meets(r: list[float]) -> bool:
    """The defaults' target: within 1.5x of the best on 90% of the problems, within 3x on all."""
    return quantile(r, 0.9) <= 1.5 and max(r) <= 3


def save(path: str, data: dict) -> None:
    from sdeflow.files import atomic_write

    atomic_write(path, lambda tmp: open(tmp, "w").write(json.dumps(data)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=sorted(SPLITS), nargs="+", default=["choose"])
    parser.add_argument("--count", type=int, default=24, help="number of problems in each split (default 24)")
    parser.add_argument("--shard", type=shard, default=(0, 1), help="i/k: run the problems whose index is i modulo k")
    parser.add_argument("--out", default=OUT, help="the results file (shards share it)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pilot", type=int, default=None, metavar="N",
                        help=f"measure on N fresh draws per problem instead, into {os.path.basename(PILOT_OUT)} "
                             "unless --out says otherwise (what a pilot run sees; see benchmarks/defaults.py)")
    parser.add_argument("--samples", type=int, default=None, metavar="N",
                        help="measure on N of the benchmark's draws per problem instead of the problem's own count "
                             "(a finer measurement: give --out, docs/benchmarks/families_fine.json for benchmarks/defaults.py)")
    parser.add_argument("--max-dim", type=int, default=None, metavar="D", help="only the problems of at most D dimensions")
    parser.add_argument("--gaussian", action="store_true",
                        help=f"measure on the Gaussian of each problem's data (its exact mean and covariance) instead, "
                             f"into {os.path.basename(GAUSSIAN_OUT)} unless --out says otherwise (see "
                             "benchmarks/defaults_tails.py)")
    parser.add_argument("--fit", type=int, default=None, metavar="N",
                        help="with --gaussian: the Gaussian fitted to N samples of each problem's data instead, as "
                             "sdeflow tune --on gaussian fits it, into "
                             f"{os.path.basename(FIT_OUT.format('N'))} unless --out says otherwise")
    parser.add_argument("--moved", action="store_true",
                        help="measure only the grids sdeflow tune --method choose moves to where sdeflow samples from "
                             "(uniform and quadratic on a flow, from 0.999), on the same draws as the measurement the "
                             "other options name, into its file's _moved.json beside it")
    args = parser.parse_args()
    if args.fit is not None and (not args.gaussian or args.fit < 2):
        parser.error("--fit N (at least 2 samples) fits the Gaussian of --gaussian: give both")
    if args.pilot and args.samples:
        parser.error("--pilot and --samples are two measurements: give one")
    if args.pilot and args.gaussian:
        parser.error("--pilot and --gaussian are two measurements: give one")
    if args.samples and args.out == OUT and not args.gaussian:
        parser.error(f"--samples changes the measurement: give another --out than {os.path.basename(OUT)}")
    out = args.out if args.out != OUT else PILOT_OUT if args.pilot else FIT_OUT.format(args.fit) if args.fit else \
        GAUSSIAN_OUT if args.gaussian else OUT
    out = moved_path(out) if args.moved else out
    i, k = args.shard
    torch.set_num_threads(args.threads)
    for split in args.split:
        for idx in range(i, args.count, k):
            if args.max_dim is None or draw_problem(SPLITS[split] + idx)[1]["dim"] <= args.max_dim:
                run_problem(SPLITS[split] + idx, out, args.pilot, args.samples, args.gaussian, args.fit, args.moved)


def run_problem(seed: int, out: str, pilot: int | None = None, samples: int | None = None, gaussian: bool = False,
                fit: int | None = None, moved: bool = False) -> None:
    """Measure the problem of ``seed`` unless ``out`` has it, and add it to ``out``."""
    if str(seed) in load(out)["problems"]:
        return
    start = time.time()
    result = measure(seed, pilot=pilot, samples=samples, gaussian=gaussian, fit=fit, moved=moved)
    with open(out + ".lock", "w") as lock:  # shards share the file: one writer at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = load(out)  # re-read: another shard may have saved since
        data["problems"][str(seed)] = result
        save(out, data)
    p = result["params"]
    print(f"problem {seed}: D={p['dim']} K={p['components']} rank={p['rank']} cond={p['condition']:.0f} "
          f"sep={p['separation']:.2f}: {time.time() - start:.0f} s", flush=True)

if __name__ == "__main__":
    main()

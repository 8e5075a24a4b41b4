"""``sdeflow tune``: fit time grids to a model for samplers and NFE budgets, stored beside its checkpoint
(or, ``--method choose``, choose its sampler and hand grid per budget: then ``sdeflow sample``'s default).

The grids are fitted on ``--samples`` prior draws (per-sample seeds; labels cycle through the
classes of a class-conditional model) against one teacher solve shared by every sampler and budget,
and written to ``<checkpoint>.grids.json`` (merged with what is there; for a shipped model, whose
files are read-only, ``<user folder>/tuned/<name>.grids.json``, see :mod:`sdeflow.tuning.store`), where
``sdeflow sample --checkpoint ... --grid tuned`` reads them. ``--coefficients`` also fits each
sampler's coefficients on its tuned grid (:func:`~sdeflow.tuning.optimize_coefficients`), stored with
the grid and used by ``--grid tuned`` too.
"""

from __future__ import annotations

import math
import os
import time

import torch

from ..registry import SAMPLERS, default_sampling, lookup


def add_tune_parser(sub) -> None:
    p = sub.add_parser("tune", help="fit time grids to a model for given samplers and NFE budgets",
                       description="Fit a time grid to a model for each sampler and NFE budget on a batch of prior "
                       "draws against a many-step teacher solve (dynamic programming over logSNR candidates, then "
                       "BFGS on the endpoint error), print each fitted grid's error beside the best hand grid's, and "
                       "store the grids beside the checkpoint for sdeflow sample --grid tuned.")
    p.add_argument("--checkpoint", default="shipped:digits", metavar="NAME|PATH",
                   help="a shipped model, a checkpoint .safetensors or a training run folder (default: shipped:digits)")
    p.add_argument("--sampler", default=None, metavar="NAME[,NAME...]",
                   help="deterministic fixed-grid samplers to tune for (default: sdeflow's default at each budget)")
    p.add_argument("--nfe", default="5,6,8,10", metavar="N[,N...]", help="NFE budgets (default: 5,6,8,10)")
    p.add_argument("--samples", type=int, default=100, help="prior draws the grids are fitted on (default: 100)")
    p.add_argument("--method", default="dp+descent", choices=["dp+descent", "dp", "descent", "stored", "choose"],
                   help="dynamic programming, descent from the best hand grids, or both (default: dp+descent); "
                   "stored: keep the grid already stored for the sampler and budget (with --coefficients); "
                   "choose: fit nothing, run every candidate sampler (or those of --sampler) on every hand grid and "
                   "keep the most accurate on the draws (32 --samples are enough): sdeflow sample's default for this model "
                   "at that budget")
    p.add_argument("--pilot", type=int, default=None, metavar="K",
                   help="with --method choose: a screened pilot of K of the --samples draws (sdeflow's default runs on "
                   "all of them at the budget and at twice it; the teacher and the candidates run on the K/2 draws "
                   "where the two disagree most and K/2 others, weighted by their shares); default: all the draws")
    p.add_argument("--verify", type=int, default=None, metavar="M",
                   help="with --method choose: a verified pilot (give a few hundred --samples): the candidates run on "
                   "32 random draws of them, the 4 least in error there on all of them, and the teacher on the M "
                   "draws where those 4 part most (16 is enough); the least error over all the draws, so estimated, wins")
    p.add_argument("--on", default="model", choices=["model", "gaussian"],
                   help="with --method choose: run the candidates on the model (default), or on the Gaussian of its "
                   "training data (--teleport-data, or the checkpoint's bundled dataset), no model evaluation at all")
    p.add_argument("--gradient", default="autograd", choices=["autograd", "differences"],
                   help="how the descent differentiates the loss: through the sampling run (autograd, one run per "
                   "gradient; the default) or by central differences (2 runs per grid point)")
    p.add_argument("--starts", type=int, default=2, help="best hand grids the descent also starts from (default: 2)")
    p.add_argument("--iterations", type=int, default=60,
                   help="BFGS iterations of each descent of a grid (default: 60; a few give a quick first look)")
    p.add_argument("--rounds", type=int, default=15,
                   help="at most this many rounds of 10 L-BFGS iterations of a coefficient fit, each scored on the "
                   "held-out draws (default: 15)")
    p.add_argument("--teacher-steps", type=int, default=150,
                   help="resolution of the teacher's reference grid (default: 150)")
    p.add_argument("--coefficients", action="store_true",
                   help="also fit each sampler's coefficients on its tuned grid (through autograd, early-stopped on "
                   "held-out draws; give it several hundred --samples)")
    p.add_argument("--holdout", type=float, default=0.3,
                   help="draws every fit keeps aside, a share of --samples below 1 or a number of them from 1 up: "
                   "fits are selected on them, and kept only if they beat the best hand grid (or the sampler's own "
                   "coefficients) there (default: 0.3)")
    p.add_argument("--check-draws", type=float, default=0,
                   help="draws kept apart from every fit and its selection, a share of --samples below 1 or a number "
                   "of them from 1 up: a fit is kept only if it beats the best hand grid (or the sampler's own "
                   "coefficients) on them too, as the held-out draws that selected it (default: none)")
    p.add_argument("--trim", type=float, default=0.1,
                   help="share of the worst draws the fitting error leaves out, so that the few draws ending in "
                   "another mode than the teacher's do not decide the fit (default: 0.1); 0 fits the plain RMS, "
                   "which those draws decide: give it 1000 --samples")
    p.add_argument("--start", default="top", choices=["top", "leading", "teleport", "search"],
                   help="where the fitted grid begins: the top of the schedule; leading, one step below it with the "
                   "top's noise (diffusers' leading spacing); teleport, where the data's Gaussian carries the noise "
                   "(its time chosen as sdeflow sample --teleport auto does); search, the best of these on the "
                   "held-out draws (default: top)")
    p.add_argument("--teleport-data", default=None, metavar="FILE",
                   help="data (.npy/.npz) the Gaussian of --start teleport/search or --on gaussian is fitted to "
                   "(default: the checkpoint's bundled dataset)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior draws (default: 0)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="the .json file to write (default: <checkpoint>.grids.json beside the checkpoint; for a shipped "
                   "model ~/.local/share/sdeflow/tuned/<name>.grids.json, or under $SDEFLOW_HOME)")


def _budgets(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--nfe takes budgets such as 5 or 5,6,8,10; got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"every --nfe budget must be >= 1, got {text!r}")
    return sorted(set(values))


def run_tune(args) -> None:
    from ..files import check_output
    from ..generation import sample_seed
    from ..pretrained import load_model
    from ..sampling import prior_sample
    from ..samplers.fitted import check_fittable
    from ..tuning.draws import check_holdout
    from ..tuning import (GridSpace, Split, Teacher, candidate_times, candidates, check_tunable, find_tuned,
                          optimize_coefficients, optimize_grid, save_tuned, steps_for, tuned_path, tuned_paths)

    budgets = _budgets(args.nfe)
    for name in ("samples", "teacher_steps", "iterations", "rounds"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.starts < 0:
        raise ValueError(f"--starts must be >= 0, got {args.starts}")
    if args.method == "stored" and not args.coefficients:
        raise ValueError("--method stored keeps the stored grids and only fits coefficients: add --coefficients")
    if args.pilot is not None and args.method != "choose":
        raise ValueError("--pilot picks the draws of --method choose's pilot; the fits use every draw: leave it out")
    if args.pilot is not None and not 2 <= args.pilot <= args.samples:
        raise ValueError(f"--pilot must be from 2 to the {args.samples} --samples, got {args.pilot}")
    if args.verify is not None:
        from ..tuning.choose import VERIFY_PILOT

        if args.method != "choose" or args.pilot is not None:
            raise ValueError("--verify checks the finalists of --method choose's random pilot: use it with --method "
                             "choose and without --pilot (a screened pilot)")
        if args.verify < 1 or args.samples <= VERIFY_PILOT + args.verify:
            raise ValueError(f"--verify M checks M >= 1 of the --samples draws beside a pilot of {VERIFY_PILOT}: give "
                             f"more than {VERIFY_PILOT} + M --samples (a few hundred), got --verify {args.verify} "
                             f"and {args.samples} --samples")
    if args.method == "choose" and (args.coefficients or args.start != "top"):
        raise ValueError("--method choose picks a sampler and a hand grid from the top; --coefficients and --start "
                         "belong to a fit: tune the chosen sampler's grid afterwards")
    if args.coefficients and args.start != "top":
        raise ValueError(f"--coefficients fits a sampler on a grid that starts at the top; --start {args.start} "
                         "begins below it: leave one out")
    if args.on == "gaussian" and args.method != "choose":
        raise ValueError("--on gaussian runs --method choose's candidates on the data's Gaussian; a fit needs the model")
    if args.teleport_data and args.start not in ("teleport", "search") and args.on != "gaussian":
        raise ValueError("--teleport-data fits the Gaussian of --start teleport or search or of --on gaussian; "
                         "give one of those")
    if not 0.0 <= args.trim < 0.5:
        raise ValueError(f"--trim must be a share of the draws in [0, 0.5), got {args.trim}")
    try:
        check_holdout(args.holdout)
        if args.check_draws:
            check_holdout(args.check_draws, "check-draws")
    except ValueError as e:
        raise ValueError(f"--{e}") from None
    try:
        Split.fit_count(args.samples, args.holdout, args.check_draws)
    except ValueError:
        also = f" and --check-draws {args.check_draws:g}" if args.check_draws else ""
        raise ValueError(f"tuning needs draws to fit on and to hold out at --holdout {args.holdout:g}{also}; "
                         f"{args.samples} --samples are too few") from None
    model = load_model(args.checkpoint)
    den, sch = model.denoiser, model.denoiser.schedule
    names = args.sampler.split(",") if args.sampler else [None]
    jobs = []
    for budget in budgets:
        if args.method == "choose":  # unknown or stochastic samplers are refused before any evaluation
            candidates(sch, budget, args.sampler.split(",") if args.sampler else None)
            continue
        for name in names:
            name = name or default_sampling(sch, budget)[0]
            sampler = lookup(SAMPLERS, "sampler", name)()
            check_tunable(sampler, name)
            if args.coefficients:
                check_fittable(sampler, name)
            jobs.append((name, sampler, budget))
    out = check_output(args.out or tuned_path(model.path), (".json",))
    where = [out] if args.out else tuned_paths(model.path)  # --method stored: the user's grids, then the shipped ones
    seeds = [sample_seed(args.seed, i) for i in range(args.samples)]
    space = GridSpace(sch, 1)  # the candidate times and the start time do not depend on the step count
    x = prior_sample(sch, (args.samples, *model.shape), t=space.t_max, seeds=seeds)
    cond = {"label": torch.arange(args.samples) % model.num_classes} if model.num_classes else None
    start = time.time()
    stored = {}
    if args.method == "stored":  # every grid is looked up before the teacher runs
        stored = {(name, budget): find_tuned(where, name, budget, steps_for(sampler, sch, budget))
                  for name, sampler, budget in jobs}
    gauss = None
    if args.start in ("teleport", "search") or args.on == "gaussian":
        from ..tuning.gaussian import GaussianDenoiser, model_gaussian

        if args.on == "gaussian":  # the choice runs on the data's Gaussian in the model's place (from the top)
            den = GaussianDenoiser(model_gaussian(model, args.teleport_data), sch)
        else:
            gauss = model_gaussian(model, args.teleport_data)
    times = candidate_times(space) if args.method in ("dp", "dp+descent") else None
    teacher = None
    if args.pilot is not None or args.verify is not None:  # these run their own teacher on the draws they pick
        choose(args, den, None, budgets, out, x, cond)
        return
    if gauss is None or args.method == "stored":  # with a Gaussian, each fit runs its own teacher (see optimize_grid)
        teacher = Teacher(den, x, cond=cond, t_max=space.t_max, steps=args.teacher_steps, times=times)
        print(f"teacher: {teacher.calls} {evaluations(args)} on {args.samples} draws, {time.time() - start:.0f} s")
    if args.method == "choose":
        choose(args, den, teacher, budgets, out)
        return
    for name, sampler, budget in jobs:
        start = time.time()
        if args.method == "stored":
            tuned = stored[name, budget]
            if abs(tuned.ts[0] - teacher.t_max) > 1e-9:
                raise ValueError(f"the stored {name} grid at NFE {budget} starts at t = {tuned.ts[0]:.6g}, not at "
                                 f"{teacher.t_max:.6g} where the draws are: refit it with --method dp+descent")
            print(f"{name} NFE {tuned.nfe} ({len(tuned.ts) - 1} steps): the stored grid "
                  f"{', '.join(f'{t:.4g}' for t in tuned.ts)}")
        else:
            given = {"teacher": teacher} if teacher is not None else {"x_init": x, "cond": cond, "teacher_steps": args.teacher_steps}
            tuned = optimize_grid(den, sampler, budget, sampler_name=name, method=args.method,
                                  starts=args.starts, gradient=args.gradient, iters=args.iterations,
                                  holdout=args.holdout, check=args.check_draws, trim=args.trim, start=args.start,
                                  teleport=gauss, **given)
            hand, hand_loss = tuned.best_hand
            result = (f"no fit beat the {hand} hand grid, kept (held-out error {hand_loss:.3g})"
                      if tuned.method.startswith("hand:")
                      else f"held-out error {tuned.loss:.3g} vs {hand_loss:.3g} ({hand} grid)")
            if tuned.start != "top":
                result += f", starting {tuned.start} at t = {tuned.ts[0]:.4g}"
            print(f"{name} NFE {tuned.nfe} ({len(tuned.ts) - 1} steps): {result}, {tuned.cost_nfe} evaluations "
                  f"({tuned.cost_grad} differentiated), {time.time() - start:.0f} s; "
                  f"grid {', '.join(f'{t:.4g}' for t in tuned.ts)}")
        if args.coefficients:
            start = time.time()
            if tuned.start != "top":  # a stored grid (--method stored) that begins below the top
                raise ValueError(f"the {name} grid at NFE {tuned.nfe} starts {tuned.start}: coefficients are fitted on "
                                 "grids that start at the top")
            tuned = optimize_coefficients(den, sampler, tuned.grid(), teacher=teacher, sampler_name=name,
                                          holdout=args.holdout, check=args.check_draws, trim=args.trim, tuned=tuned,
                                          rounds=args.rounds)
            kept = (f"{len(tuned.shift)} coefficients" if tuned.shift is not None
                    else f"not kept: {name}'s own are as good")
            print(f"  coefficients: held-out error {tuned.loss:.3g} vs {tuned.base_loss:.3g} with {name}'s own "
                  f"(RMS {tuned.heldout:.3g}), {kept}, {tuned.cost_grad} evaluations differentiated, "
                  f"{time.time() - start:.0f} s")
        save_tuned(out, [tuned])  # after each fit: an interrupted run keeps what it finished
    wrote(args, out, budgets)


def wrote(args, out: str, budgets: list[int]) -> None:
    """Name the file written and the command that samples on its grids (at the first budget)."""
    import shlex

    names = args.sampler.split(",") if args.sampler and args.method != "choose" else []
    command = ["sdeflow", "sample", "--checkpoint", str(args.checkpoint), "--grid", "tuned", "--nfe", str(budgets[0])]
    command += (["--sampler", names[0]] if names else []) + (["--tuned", out] if args.out else [])
    if args.method == "choose" and not args.out:  # a choice beside the model is sdeflow sample's default at its budget
        command = [c for c in command if c not in ("--grid", "tuned")]
        print(f"wrote {out}; sdeflow sample runs it by default: {shlex.join(command)}")
        return
    print(f"wrote {out}; sample on its grids with: {shlex.join(command)}")


def evaluations(args) -> str:
    """What the evaluations counted are: the model's, or the data's Gaussian's in its place (``--on``)."""
    return "evaluations" if args.on == "model" else "evaluations of the data's Gaussian (none of the model)"


def choose(args, den, teacher, budgets: list[int], out: str, x=None, cond=None) -> None:
    """``--method choose``: the most accurate candidate at each budget on the draws (a shared ``teacher``'s,
    a screened pilot of ``args.pilot`` of the draws ``x``, or a verified pilot on them, ``args.verify``), stored as
    it is found."""
    from ..tuning import choose_configuration, save_tuned
    from ..tuning.choose import default_key

    for budget in budgets:
        start = time.time()
        given = ({"teacher": teacher} if teacher is not None else
                 {"x_init": x, "cond": cond, "pilot": args.pilot, "verify": args.verify, "seed": args.seed,
                  "teacher_steps": args.teacher_steps})
        chosen = choose_configuration(den, budget, samplers=args.sampler.split(",") if args.sampler else None, **given)
        chosen.on = args.on
        default = default_key(den.schedule, budget)
        seen = (f"{chosen.samples} draws" if teacher is not None or (args.pilot or 0) >= args.samples
                else f"a pilot of {chosen.samples} of {args.samples} draws, screened" if args.pilot
                else f"a pilot of {chosen.samples} of {args.samples} draws, its finalists checked on all of them")
        print(f"NFE {budget}: {chosen.sampler} ({chosen.chosen_grid}), RMS {chosen.loss:.3g} on "
              f"{seen}; the default {default}: RMS {chosen.hand.get(default, math.inf):.3g}; "
              f"{chosen.cost_nfe} {evaluations(args)}, {time.time() - start:.0f} s")
        save_tuned(out, [chosen])
    wrote(args, out, budgets)


# What sdeflow sample reads of the files sdeflow tune writes

def use_tuned_grid(args, model):
    """``--grid tuned``: the grid ``sdeflow tune`` stored beside the checkpoint for the sampler and the
    budget ``--nfe`` (default sampler: the one chosen for the model at ``--nfe`` by ``sdeflow tune --method
    choose``, if a choice is stored; else sdeflow's default if a grid is stored for it, else the stored
    sampler with the least error at that budget), set as a user grid; a grid fitted for the sampler is
    taken before a choice of it. Returns the stored entry (its fitted coefficients, if any, replace the
    sampler's: :meth:`~sdeflow.tuning.TunedGrid.sampler_for`)."""
    from ..tuning import check_tunable, find_chosen, find_tuned, load_tuned, steps_for, tuned_paths

    if args.steps is not None:
        raise ValueError("--grid tuned fixes the steps of the budget --nfe; leave --steps out")
    schedule = model.denoiser.schedule
    paths = [args.tuned] if args.tuned else tuned_paths(model.path)
    if args.sampler is None and (chosen := find_chosen(paths, args.nfe)) is not None:
        args.sampler = chosen.sampler
    elif args.sampler is None:  # the default sampler's grid; else the stored sampler at this budget with the least error
        default = default_sampling(schedule, args.nfe)[0]
        stored = [g for p in paths for g in load_tuned(p) if g.nfe == args.nfe and g.sampler in SAMPLERS]
        args.sampler = default if not stored or any(g.sampler == default for g in stored) else \
            min(stored, key=lambda g: g.loss).sampler
    sampler = lookup(SAMPLERS, "sampler", args.sampler)()
    check_tunable(sampler, args.sampler)
    return run_stored(args, find_tuned(paths, args.sampler, args.nfe, steps_for(sampler, schedule, args.nfe)))


def run_stored(args, tuned):
    """Set the stored entry ``tuned``'s grid as the run's (a user grid that the budget chose); returns it."""
    args.grid = ",".join(repr(t) for t in tuned.ts)
    args.nfe_given = False
    return tuned


def chosen_default(args, model):
    """The configuration chosen for ``model`` at ``--nfe`` (stored by ``sdeflow tune --method choose``
    beside it, or shipped with it), set as the run's sampler and grid, where one is stored and no flag
    says how to sample (``--sampler``, ``--grid``, ``--steps``, ``--teleport``): ``sdeflow sample``'s
    default, before the table's (:data:`~sdeflow.samplers.names.DEFAULTS`). Returns it, or ``None``."""
    from ..tuning import model_choice

    if any(v is not None for v in (args.sampler, args.grid, args.steps, args.teleport)):
        return None
    chosen = model_choice(model, args.nfe)
    if chosen is None:
        return None
    args.sampler = chosen.sampler
    return run_stored(args, chosen)


def check_tuned(args) -> None:
    """``--tuned FILE``: the grids of ``--grid tuned`` from a file of the user's (``sdeflow tune --out FILE``);
    a missing file, one that is not a tuned-grid file or another ``--grid`` is refused before any work."""
    if args.tuned is None:
        return
    from ..tuning import load_tuned

    if args.grid not in (None, "tuned"):
        raise ValueError(f"--tuned FILE runs a grid stored in FILE; leave --grid {args.grid} out (or write --grid tuned)")
    if not os.path.isfile(args.tuned):
        raise ValueError(f"--tuned {args.tuned}: no such file (sdeflow tune --out FILE writes one)")
    if not load_tuned(args.tuned):
        raise ValueError(f"--tuned {args.tuned} holds no tuned grid")
    args.grid = "tuned"

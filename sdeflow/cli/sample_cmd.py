"""``sdeflow sample``: sample a trained model (default: the shipped digits model) or one of the
exact problems with any sampler, grid and NFE; write a PNG picture and/or an .npz of the samples.

Model samples are generated in fixed chunks with per-sample seeds (:mod:`sdeflow.generation`), so
they do not depend on ``--batch-size`` nor on the number of processes under torchrun.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch

from ..files import check_output, save_npz
from .args import PICTURE_LIMIT, parse_labels
from .tune_cmd import check_tuned, chosen_default, use_tuned_grid
from ..noise import BrownianTreeNoise, GeneratorNoise, SeededNoise
from ..sampling import sample
from ..registry import (ALL_SAMPLERS, GUIDANCE_METHODS, PROBLEMS, SCHEDULES, default_sampling, lookup, parse_grid,
                        steps_for_nfe)


#: The evaluation budget without --nfe (a few-step model's default is the budget it was trained for).
DEFAULT_NFE = 20



def resolve(args, schedule=None):
    """Schedule, sampler, grid and step count from the common sampling flags (a model's own
    schedule when given). A grid must end at clean data (t = 0) unless ``--partial`` asks for a run
    that stops early: otherwise the samples would silently be noise."""
    schedule = schedule or lookup(SCHEDULES, "schedule", args.schedule)()
    if args.sampler is None:  # sdeflow's default for this schedule family and budget (see registry.DEFAULTS)
        args.sampler, grid = default_sampling(schedule, args.nfe)
        args.grid = args.grid or grid
    sampler = lookup(ALL_SAMPLERS, "sampler", args.sampler)()
    if args.grid == "tuned":
        raise ValueError("--grid tuned takes a model's grids from sdeflow tune; exact problems have none (use a named grid)")
    if "," in args.grid:
        given = [f for f, on in (("--steps", args.steps is not None), ("--nfe", getattr(args, "nfe_given", False))) if on]
        if given:
            raise ValueError(f"--grid {args.grid} fixes the steps; leave out {' and '.join(given)} (or give a grid name)")
        ts = parse_grid(args.grid, 0, schedule)
        steps = ts.numel() - 1
    else:
        steps = args.steps if args.steps is not None else steps_for_nfe(sampler, schedule, args.grid, args.nfe)
        ts = parse_grid(args.grid, steps, schedule)
    if float(ts[-1]) != 0.0 and not getattr(args, "partial", False):
        raise ValueError(f"the grid ends at t = {float(ts[-1]):.6g}, before clean data (t = 0): the samples would "
                         "still be noisy; end it with 0 (e.g. 1,0.5,0) or pass --partial for a run that stops early")
    from ..sampling import planned

    planned(sampler, schedule, ts)  # a grid the schedule cannot take is refused now, before any work
    return schedule, sampler, ts, steps


def check_teleport(args) -> None:
    """Refuse ``--teleport`` settings that cannot work, before any model is loaded."""
    args.t_skip = None
    if args.teleport is None:
        if getattr(args, "teleport_data", None) and args.grid != "tuned":
            raise ValueError("--teleport-data fits the Gaussian of --teleport (or of a grid tuned with --start teleport); "
                             "give --teleport auto or a time")
        return
    if args.grid == "tuned":
        raise ValueError("a tuned grid fixes where its run starts (sdeflow tune --start): leave --teleport out")
    if args.teleport != "auto":
        try:
            t = float(args.teleport)
        except ValueError:
            raise ValueError(f"--teleport takes auto or a time in (0, 1), got {args.teleport!r}") from None
        if not 0.0 < t < 1.0:
            raise ValueError(f"--teleport takes auto or a time in (0, 1), got {args.teleport!r}")
    if args.grid is not None and "," in args.grid:
        raise ValueError("--teleport starts a named grid below the top; a user grid (--grid T0,T1,..) already says where "
                         "it starts: leave --teleport out")


def teleported(args, gauss, denoiser, sampler, schedule, steps, num_classes: int = 0):
    """The run's start time and grid under ``--teleport``: ``auto`` asks the Gaussian where it explains 99%
    of the model's field (200 draws of a seed of their own, the classes in turn for a class-conditional
    model), a number is the time itself."""
    from ..grids import start_time
    from ..sampling import planned

    args.top = start_time(schedule)
    if args.teleport == "auto":
        z = torch.randn(200, *gauss.shape, generator=torch.Generator().manual_seed(args.seed + 7919))
        cond = {"label": torch.arange(200) % num_classes} if num_classes else None
        t_skip, _ = gauss.choose_time(denoiser, z.to(next(iter(denoiser.parameters()), z).device), cond=cond)
    else:
        t_skip = min(float(args.teleport), start_time(schedule))
    ts = parse_grid(args.grid, steps, schedule, t_max=t_skip)
    planned(sampler, schedule, ts)
    return t_skip, ts


def noise_source(args, gen):
    """The ``--noise`` choice; per-sample seeds are derived from ``--seed``."""
    seeds = [args.seed * 1_000_003 + b for b in range(args.num)]
    return {"generator": lambda: GeneratorNoise(gen), "seeded": lambda: SeededNoise(seeds),
            "brownian": lambda: BrownianTreeNoise(seeds)}[getattr(args, "noise", "generator")]()


def _outputs(args, default: str) -> list[str]:
    """The ``--out`` files, each checked (a .png or .npz name in a writable folder) before any work."""
    outs = args.out if args.out is not None else [default]
    return [check_output(o, (".png", ".npz")) for o in outs if o]


def _option_values(items: list[str] | None) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--guidance-option takes KEY=VALUE, got {item!r}")
        try:
            out[key] = None if value.lower() == "none" else float(value)
        except ValueError:
            raise ValueError(f"--guidance-option {key}: expected a number or none, got {value!r}") from None
    return out


def check_guidance(args) -> None:
    """Refuse guidance flags that cannot work, before any model is loaded."""
    args.sampler_given = args.sampler is not None
    given = [f for f in ("guidance_interval", "guidance_option", "guide", "classifier") if getattr(args, f, None)]
    if args.guidance is None:
        if given or args.guidance_logsnr or args.guidance_separate or args.guidance_method != "cfg":
            raise ValueError("the guidance settings need --guidance W (the scale)")
        return
    from ..guidance import METHODS, parse_interval

    needs = METHODS.info(args.guidance_method)
    if not math.isfinite(args.guidance) or args.guidance < 0:
        raise ValueError(f"--guidance must be a finite number >= 0 (0: unconditional, 1: the conditional model, "
                         f"above 1: stronger guidance), got {args.guidance}")
    if args.guidance > needs.max_scale:
        raise ValueError(f"{args.guidance_method} takes a guidance scale in [0, {needs.max_scale:g}], got {args.guidance}")
    args.guidance_options = _option_values(args.guidance_option)
    args.interval = parse_interval(args.guidance_interval, "logsnr" if args.guidance_logsnr else "sigma")
    if args.guide is not None and needs.model != "guide":
        raise ValueError("--guide is the weaker model of autoguidance: use it with --guidance-method auto")
    if args.classifier is not None and needs.model != "classifier":
        raise ValueError(f"--classifier is for the methods that use a classifier "
                         f"({', '.join(m for m in METHODS if METHODS.info(m).model == 'classifier')})")


#: The shipped guide (autoguidance) and noise-aware classifier of each shipped model that has them.
DEFAULT_GUIDES = {"digits": "shipped:digits-small"}
DEFAULT_CLASSIFIERS = {"digits": "shipped:digits-noisy-classifier"}


def apply_guidance(args, denoiser, sampler, model_name: str | None, device="cpu"):
    """The guided denoiser and sampler of the ``--guidance`` flags (unchanged without them)."""
    if args.guidance is None:
        return denoiser, sampler
    from ..guidance import METHODS, guided, guided_sampler
    from ..pretrained import load_classifier, load_model

    guide = classifier = None
    needs = METHODS.info(args.guidance_method).model
    if needs == "guide":
        name = args.guide or DEFAULT_GUIDES.get(model_name)
        if name is None:
            raise ValueError(f"{args.guidance_method} needs --guide (a weaker checkpoint of the same task)")
        guide = load_model(name, device=device).denoiser
    if needs == "classifier":
        name = args.classifier or DEFAULT_CLASSIFIERS.get(model_name)
        if name is None:
            raise ValueError(f"{args.guidance_method} needs --classifier (a noise-aware classifier checkpoint)")
        classifier = load_classifier(name, device=device)
    options = dict(args.guidance_options)
    g = guided(denoiser, args.guidance_method, args.guidance, interval=args.interval, guide=guide,
               classifier=classifier, batched=not args.guidance_separate, **options)
    try:
        sampler = guided_sampler(args.guidance_method, sampler)
    except ValueError:
        if args.sampler_given:
            raise
        # the default sampler of this budget carries corrector evaluations over: CFG++'s own DDIM instead
        from ..samplers import DDIM

        args.sampler, sampler = "ddim", guided_sampler(args.guidance_method, DDIM())
    from ..sampling import planned

    planned(sampler, denoiser.schedule, args.ts)
    return g, sampler


def _teleport_note(args) -> str:
    if args.t_skip is None:
        return ""
    if float(args.ts[0]) >= args.top:
        return ", no teleport (below the top the Gaussian explains less than 99% of the field)"
    return f", teleported to t = {args.t_skip:.4g}"


def _forwards_note(g, samples: int) -> str:
    forwards = getattr(g, "forwards", None)
    if not forwards:
        return ""
    return f", {forwards / samples:.4g} network forwards per sample"


def run_sample(args) -> dict:
    args.nfe_given = args.nfe is not None
    check_guidance(args)
    check_tuned(args)
    check_teleport(args)
    if args.problem is not None:
        if args.checkpoint is not None:
            raise ValueError("give either --checkpoint (a model) or --problem (an exact mixture), not both")
        return _sample_problem(args)
    return _sample_model(args)


def _sample_problem(args) -> dict:
    args.num = args.num or 1000
    args.nfe = args.nfe or DEFAULT_NFE
    args.schedule = args.schedule or "vp-linear"
    if args.sampler is not None:
        args.grid = args.grid or "logsnr"
    outs = _outputs(args, "samples.npz")
    schedule, sampler, ts, steps = resolve(args)
    mixture, shape = lookup(PROBLEMS, "problem", args.problem)()
    labels = parse_labels(args.label, args.num, mixture.num_classes) if (mixture.num_classes or args.label) else None
    if labels is not None:
        labels = torch.where(labels == mixture.num_classes, -1, labels)  # "none": the oracle's unconditional label
    elif args.guidance is not None:
        raise ValueError(f"--guidance needs a problem with classes (labelled-ring-2d); {args.problem} has none")
    if args.guidance is not None and GUIDANCE_METHODS.info(args.guidance_method).model == "classifier":
        raise ValueError(f"{args.guidance_method} on a problem: in Python, pass the oracle's exact classifier, "
                         "mixture.classifier(schedule), to sdeflow.guidance.guided")
    gauss = None
    if args.teleport is not None:
        from ..teleport import Teleport

        gauss = Teleport.from_moments(mixture.mean().reshape(shape), mixture.covariance())
        args.t_skip, ts = teleported(args, gauss, mixture.denoiser(schedule), sampler, schedule, steps)
    args.ts = ts
    denoiser, sampler = apply_guidance(args, mixture.denoiser(schedule), sampler, None)
    gen = torch.Generator().manual_seed(args.seed)
    if gauss is None:
        x_init, _ = mixture.sample_t(args.num, schedule, float(ts[0]), gen)
    else:
        x_init = gauss.start(torch.randn(args.num, *shape, generator=gen, dtype=torch.float64), schedule, args.t_skip)
    result = sample(denoiser, sampler, ts, x_init.float().reshape(args.num, *shape), cond={"label": labels},
                    noise=noise_source(args, gen), progress=args.progress and sys.stderr.isatty())
    print(f"{args.num} samples of {args.problem} with {args.sampler} on {args.schedule}: "
          f"{steps} step{'s' if steps != 1 else ''}, NFE {result.nfe}" + _teleport_note(args)
          + _forwards_note(denoiser, args.num))
    for out in outs:
        if out.lower().endswith(".npz"):
            save_npz(out, samples=result.x.numpy(), nfe=np.array(result.nfe), ts=ts.numpy())
        else:
            from ..data.pictures import save_samples

            save_samples(result.x, out, "image" if len(shape) == 3 else "vector")
        print(f"  wrote {out}")
    return {"x": result.x, "nfe": result.nfe}


def _sample_model(args) -> dict:
    from ..data.pictures import class_columns, save_samples
    from ..generation import gather, generate
    from ..pretrained import load_model
    from ..distributed import Distributed
    from ..training.config import TrainConfig
    from ..training.students import student_sampling

    if args.schedule is not None:
        raise ValueError("--schedule is fixed by the model's training; leave it out when sampling a checkpoint")
    outs = _outputs(args, "samples.png")
    dist = Distributed(args.device)
    model = load_model(args.checkpoint or "shipped:digits", device=dist.device, tokens=True)
    if model.kind == "tokens":  # discrete diffusion: its own samplers (sdeflow.discrete)
        from .tokens_cmd import sample_token_model

        return sample_token_model(args, model, outs, dist)
    own = student_sampling(TrainConfig.stored(model.meta))
    if own is not None and args.sampler is None:   # a few-step model: the sampling it was trained for
        args.sampler, args.grid = own[0], args.grid or own[1]
    args.nfe = args.nfe or (own[2] if own is not None else DEFAULT_NFE)
    tuned = chosen_default(args, model)  # the configuration chosen for this model at this budget, if one is stored
    if args.grid == "tuned":
        tuned = use_tuned_grid(args, model)
    if args.sampler is not None:
        args.grid = args.grid or "auto"
    schedule, sampler, ts, steps = resolve(args, model.denoiser.schedule)
    if tuned is not None:
        sampler = tuned.sampler_for(sampler)
    if args.noise == "generator":
        args.noise = "seeded"  # per-sample seeds: independent of the batch size and of the number of processes
    args.num = args.num or (100 if model.kind == "image" else 2000)
    labels = parse_labels(args.label, args.num, model.num_classes)
    if args.guidance is not None and model.num_classes == 0:
        raise ValueError("--guidance needs a class-conditional model; this one is unconditional")
    gauss, prior_time = None, None
    if args.teleport is not None:
        from ..tuning.gaussian import model_gaussian

        gauss = model_gaussian(model, args.teleport_data)
        args.t_skip, ts = teleported(args, gauss, model.denoiser, sampler, schedule, steps, model.num_classes)
    elif tuned is not None and tuned.start == "teleport":  # the grid was fitted to begin where the Gaussian carries the noise
        from ..tuning.gaussian import model_gaussian

        from ..grids import start_time

        gauss, args.t_skip, args.top = model_gaussian(model, args.teleport_data), float(ts[0]), start_time(schedule)
    elif tuned is not None and tuned.start == "leading":  # fitted to take the top's noise as a state at ts[0]
        from ..grids import start_time

        prior_time = start_time(schedule)
    args.ts = ts
    name = args.checkpoint or "digits"
    denoiser, sampler = apply_guidance(args, model.denoiser, sampler, model.shipped, dist.device)
    chunks = generate(denoiser, sampler, ts, model.shape, args.num, seed=args.seed, labels=labels,
                      batch_size=args.batch_size, noise=args.noise, rank=dist.rank, world=dist.world,
                      progress=args.progress and dist.main and sys.stderr.isatty(), device=dist.device, teleport=gauss,
                      prior_time=prior_time)
    x = gather(chunks, dist.world)
    if dist.main:
        nfe = sampler.prepare(schedule, ts).nfe if not sampler.adaptive else "adaptive"
        procs = f" on {dist.world} processes" if dist.world > 1 else ""
        guide = "" if args.guidance is None else f", {args.guidance_method} guidance at {args.guidance:g}"
        mine = sum(len(c) for c in chunks.values())  # this process's samples (all of them on one process)
        fitted = " (fitted coefficients)" if tuned is not None and tuned.shift is not None else ""
        if tuned is not None and tuned.start == "leading":
            fitted += f" (tuned grid starting leading at t = {float(ts[0]):.4g})"
        if tuned is not None and tuned.chosen_grid is not None:
            how = "on the data's Gaussian, " if tuned.on == "gaussian" else "for this model "
            fitted += f" on the {tuned.chosen_grid} grid (chosen {how}by sdeflow tune --method choose)"
        print(f"{args.num} samples of {name} with {args.sampler}{fitted}{guide}, {steps} step{'s' if steps != 1 else ''}, NFE {nfe}{procs}"
              + _teleport_note(args) + _forwards_note(denoiser, mine))
        for out in outs:
            if out.lower().endswith(".npz"):
                raw = x * (1.0 / model.meta["data"]["scale"]) - model.meta["data"]["shift"] / model.meta["data"]["scale"]
                arrays = dict(samples=x.numpy(), raw=raw.numpy(), ts=ts.numpy())
                if labels is not None:
                    arrays["labels"] = labels.numpy()
                save_npz(out, **arrays)
            else:
                nrow = class_columns(model.num_classes) if (labels is not None and args.label in (None, "all")) else None
                shown = x[:PICTURE_LIMIT] if model.kind == "image" else x
                save_samples(shown, out, model.kind, nrow=nrow)
            print(f"  wrote {out}")
    return {"x": x, "labels": labels}

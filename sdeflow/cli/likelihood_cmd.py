"""``sdeflow likelihood``: the probability-flow NLL and bits per dimension of data under a model.

For a model (shipped or a checkpoint) the data are the first ``--num`` points of its training set
(scikit-learn's digits for the digits models: 17 grey levels, so bits per dimension are reported
with uniform dequantization on that lattice; the 2-D toys are continuous). For an exact problem the
data are exact samples and the exact ``log p_{t_min}`` is printed beside the estimate, with the error.
"""

from __future__ import annotations

import math

import torch

from ..likelihood import METHODS, PROBES, TRACES, log_likelihood
from ..registry import PROBLEMS, SCHEDULES, lookup
from .args import model_or_problem_flags


def add_likelihood_parser(sub) -> None:
    p = sub.add_parser("likelihood", help="probability-flow NLL and bits/dim of data under a model or an exact problem",
                       description="Integrate the probability-flow ODE from the data to noise with its divergence "
                       "(exact trace or Hutchinson's estimator) and print the negative log-likelihood in nats and "
                       "bits per dimension, with standard errors and the evaluations spent.")
    model_or_problem_flags(p, "a shipped model, a checkpoint .safetensors or a training run folder",
                           "an exact problem instead of a model (the exact density is printed too)")
    p.add_argument("-n", "--num", dest="num", type=int, default=32, help="number of data points (default: 32)")
    p.add_argument("--trace", default=None, choices=TRACES,
                   help="exact trace or Hutchinson's estimator (default: exact for problems up to 64 dimensions "
                   "and models up to 2, else hutchinson: the exact trace costs one network pass per dimension)")
    p.add_argument("--probes", type=int, default=4, help="Hutchinson probes per point (default: 4)")
    p.add_argument("--probe", default="rademacher", choices=PROBES, help="probe distribution (default: rademacher)")
    p.add_argument("--method", default="dopri5", choices=METHODS, metavar="METHOD",
                   help="dopri5 (error control, the default) or any deterministic fixed-grid sampler, whose step "
                   "rules then carry the divergence too (rk4, heun, dpm-solver++-2m, unipc-bh2, ...: sdeflow list)")
    p.add_argument("--steps", type=int, default=64, help="steps of a fixed-grid method (default: 64)")
    p.add_argument("--tol", type=float, default=None,
                   help="rtol = atol of dopri5 (default: 1e-7 for problems, 1e-4 for models)")
    p.add_argument("--batch-size", type=int, default=64, help="points per batch (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the problem's data and of the probes (default: 0)")
    p.add_argument("--to-data", action="store_true",
                   help="estimate log p_0 of the data (the density at t_min, corrected to t = 0 to first order in "
                   "the noise level; one more evaluation) instead of log p at t_min")


def _check(args) -> None:
    if args.checkpoint is not None and args.problem is not None:
        raise ValueError("give --checkpoint or --problem, not both")
    if args.schedule is not None and args.problem is None:
        raise ValueError("--schedule applies to --problem only (a model carries its schedule)")
    for name in ("num", "probes", "steps", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.tol is None:
        args.tol = 1e-7 if args.problem is not None else 1e-4
    if not (math.isfinite(args.tol) and args.tol > 0):
        raise ValueError(f"--tol must be a positive number, got {args.tol}")


def run_likelihood(args) -> None:
    _check(args)
    gen = torch.Generator().manual_seed(args.seed)
    levels = scale = None
    exact = None
    if args.problem is not None:
        mix, shape = PROBLEMS[args.problem]()
        schedule = lookup(SCHEDULES, "schedule", args.schedule or "vp-linear")()
        denoiser = mix.denoiser(schedule)
        x = mix.sample_t(args.num, schedule, 0.0, gen)[0].reshape(args.num, *shape).double()
        what = f"{args.num} exact samples of {args.problem} ({schedule.__class__.__name__})"
        at = lambda xb, t: mix.log_prob_t(xb.reshape(xb.shape[0], -1), schedule, t)  # noqa: E731
        exact = (lambda xb, t: mix.log_prob(xb.reshape(xb.shape[0], -1))) if args.to_data else at  # noqa: E731
        prior = lambda xe: at(xe, 1.0)  # noqa: E731  the exact p_1: the error printed is the integration's
    else:
        from ..data import load
        from ..pretrained import load_model

        model = load_model(args.checkpoint or "shipped:digits", tokens=True)
        if model.kind == "tokens":
            return token_likelihood(args, model, gen)
        denoiser, meta = model.denoiser, model.meta["data"]
        data = load(meta["name"]) if meta["name"] == "digits" or meta["kind"] == "vector" else None
        if data is None:
            raise ValueError(f"the training data of this model ({meta['name']}) are not shipped: likelihood of "
                             "shipped models and exact problems only")
        if args.num > len(data.x):
            raise ValueError(f"--num must be at most {len(data.x)} (the size of {meta['name']})")
        x = data.x[:args.num]
        prior = None
        what = f"the first {args.num} points of {meta['name']}"
        if meta["name"] == "digits":
            levels, scale = 17, 16 * float(meta["scale"])  # values 0..16 mapped to [-1, 1]
    d = x[0].numel()
    trace = args.trace or ("exact" if d <= (64 if args.problem else 2) else "hutchinson")
    nll, se2, nfe, errs = [], [], 0, []
    for lo in range(0, args.num, args.batch_size):
        xb = x[lo:lo + args.batch_size]
        r = log_likelihood(denoiser, xb, method=args.method, steps=args.steps, rtol=args.tol, atol=args.tol,
                           trace=trace, probes=args.probes, probe=args.probe, generator=gen, log_prior=prior,
                           to_data=args.to_data)
        nll.append(-r.log_prob)
        se2.append(torch.nan_to_num(r.stderr, nan=0.0) ** 2)
        nfe += r.nfe
        if exact is not None:
            errs.append((r.log_prob - exact(xb, r.t_min)).abs())
    nll, se2 = torch.cat(nll), torch.cat(se2)
    mean = float(nll.mean())
    # standard error of the mean over the points (which includes the probes' noise)
    se = float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else float(se2.sqrt().mean())
    bpd = (mean - (d * math.log(scale / (levels - 1)) if levels else 0.0)) / (d * math.log(2))
    where = (f"log p_0, from t_min = {r.t_min:.3g} corrected to t = 0" if args.to_data else
             f"log p at t_min = {r.t_min:.3g} (noise level 1e-3; --to-data for log p_0)")
    print(f"likelihood of {what}, {d} dimensions: {where}" + (", exact prior at t = 1" if prior is not None else ""))
    print(f"  trace: {trace}{f' ({args.probes} {args.probe} probes)' if trace == 'hutchinson' else ''}, "
          f"solver: {args.method}{f' tol {args.tol:g}' if args.method == 'dopri5' else f' {args.steps} steps'}, "
          f"{nfe} evaluations over {math.ceil(args.num / args.batch_size)} batch(es)")
    print(f"  NLL {mean:.4f} +- {se:.4f} nats per point")
    lattice = f" (uniform dequantization on its {levels} grey levels)" if levels else ""
    print(f"  {bpd:.4f} +- {se / (d * math.log(2)):.4f} bits per dimension{lattice}")
    if errs:
        print(f"  against the exact density: max error {float(torch.cat(errs).max()):.2e} nats")


def token_likelihood(args, model, gen: torch.Generator) -> None:
    """A token model's NELBO on the first ``--num`` sequences of its data: ``--probes`` stratified draws of
    ``(t, x_t)`` per sequence (at least 2), in nats per sequence and bits per token (an upper bound on the
    negative log-likelihood of the tokens; for the digits, of the 17-level pixels)."""
    from ..data import load
    from ..discrete import Masked, bits_per_token, nelbo_estimate
    from ..data.tokens import to_tokens

    meta = model.meta["data"]
    if meta["name"] != "digits":
        raise ValueError(f"the training data of this model ({meta['name']}) are not shipped: likelihood of shipped "
                         "models and exact problems only")
    if not isinstance(model.denoiser.process, Masked):
        raise ValueError("the NELBO is the masked process' bound; this token model's process is uniform")
    data = load("digits")
    if args.num > len(data.x):
        raise ValueError(f"--num must be at most {len(data.x)} (the size of digits)")
    x0 = to_tokens(data.x[:args.num].reshape(args.num, -1), meta["levels"])
    labels = data.labels[:args.num] if model.num_classes else None
    draws = max(2, args.probes)
    means, ses = [], []
    for lo in range(0, args.num, args.batch_size):
        m, se = nelbo_estimate(model.denoiser, x0[lo:lo + args.batch_size], model.denoiser.process, draws,
                               generator=gen, label=None if labels is None else labels[lo:lo + args.batch_size])
        means.append(m)
        ses.append(se)
    nll = torch.cat(means)
    mean, se = float(nll.mean()), float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else float(ses[0][0])
    length = x0.shape[1]
    given = "given its class" if labels is not None else "unconditional"
    print(f"NELBO of the first {args.num} digits as {length} tokens of {meta['levels']} levels ({given}), "
          f"{draws} draws of (t, x_t) per digit")
    print(f"  {mean:.4f} +- {se:.4f} nats per sequence")
    print(f"  {float(bits_per_token(torch.tensor(mean), length)):.4f} +- {se / (length * math.log(2)):.4f} bits per token")

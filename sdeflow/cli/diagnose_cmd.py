"""``sdeflow diagnose``: what a model's field is, per noise level (see :mod:`sdeflow.diagnostics`).

At noise levels spaced in logSNR, on noised copies ``alpha x + sigma z`` of data points (the training
set of a shipped model or a bundled dataset, exact samples for a problem): the relative Fokker-Planck
residual of the score, the asymmetry of its Jacobian, its curl around small loops (the loop integral
over the loop's area), and the fraction of the field the data's Gaussian explains; then the intrinsic
dimension at the data (FLIPD and the normal bundle, at noise level 0.01) and the teleportation time
the Gaussian allows. A table on the terminal, a picture with the three
curves (``--out``).
"""

from __future__ import annotations

import time

import torch

from ..registry import PROBLEMS, SCHEDULES, lookup
from .args import model_or_problem_flags


def add_diagnose_parser(sub) -> None:
    p = sub.add_parser("diagnose", help="look inside a model: Fokker-Planck residual, conservativity, Gaussian part, "
                       "intrinsic dimension",
                       description="Measure, per noise level, how far a model's score is from solving the score "
                       "Fokker-Planck equation (0 for a true score), how far its Jacobian is from symmetric (0 for a "
                       "gradient field) and how much of it the data's Gaussian explains; then the intrinsic dimension "
                       "of the data near clean points and the time teleportation may skip to. Exact problems give "
                       "the exact answers (0, 0, and the problem's own dimension).")
    model_or_problem_flags(p, "a shipped model or a checkpoint of a bundled dataset", "an exact problem instead")
    p.add_argument("-n", "--num", dest="num", type=int, default=32, help="data points per noise level (default: 32)")
    p.add_argument("--levels", type=int, default=8, help="noise levels (default: 8)")
    p.add_argument("--probes", type=int, default=None,
                   help="Hutchinson probes for the divergence (default: exact up to 64 dimensions, else 8)")
    p.add_argument("--gap-samples", type=int, default=1000,
                   help="samples of the ODE-SDE gap (sliced W2 between the two, beside two SDE runs); 0 skips it "
                   "(default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, noise and probes (default: 0)")
    p.add_argument("--out", default="diagnose.png", help="picture to write; '' for none (default: diagnose.png)")


def _check(args) -> None:
    if args.checkpoint is not None and args.problem is not None:
        raise ValueError("give --checkpoint or --problem, not both")
    if args.schedule is not None and args.problem is None:
        raise ValueError("--schedule applies to --problem only (a model carries its schedule)")
    for name in ("num", "levels"):
        if getattr(args, name) < 2:
            raise ValueError(f"--{name} must be >= 2, got {getattr(args, name)}")
    if args.gap_samples < 0 or args.gap_samples == 1:
        raise ValueError(f"--gap-samples must be 0 (skip) or >= 2, got {args.gap_samples}")
    if args.probes is not None and args.probes < 1:
        raise ValueError(f"--probes must be >= 1, got {args.probes}")


def _data(args):
    """``(denoiser, clean points, label condition or None, name, Gaussian)``."""
    from ..teleport import Teleport

    gen = torch.Generator().manual_seed(args.seed)
    if args.problem is not None:
        mix, shape = PROBLEMS[args.problem]()
        schedule = lookup(SCHEDULES, "schedule", args.schedule or "vp-linear")()
        x = mix.sample(args.num, gen).reshape(args.num, *shape)
        gauss = Teleport.from_moments(mix.mean().reshape(shape), mix.covariance())
        return mix.denoiser(schedule), x, None, f"{args.problem} ({type(schedule).__name__})", gauss
    from ..data import load
    from ..data.datasets import DATASETS
    from ..pretrained import load_model
    from ..tuning.gaussian import model_gaussian

    model = load_model(args.checkpoint or "shipped:digits")
    name = model.meta["data"]["name"]
    if name not in DATASETS:
        raise ValueError(f"the training data of this model ({name}) are not bundled with sdeflow: diagnose takes shipped "
                         "models, checkpoints of bundled datasets and exact problems")
    data = load(name)
    idx = torch.randperm(len(data.x), generator=gen)[:args.num]
    cond = {"label": data.labels[idx]} if (model.num_classes and data.labels is not None) else None
    return model.denoiser, data.x[idx].double(), cond, args.checkpoint or "digits", model_gaussian(model)


def run_diagnose(args) -> dict:
    from ..files import check_output
    from ..diagnostics import fokker_planck_residual, intrinsic_dimension, jacobian_asymmetry, loop_circulation, ode_sde_gap
    from ..grids import logsnr_grid, start_time

    _check(args)
    out = check_output(args.out, (".png",)) if args.out else None
    denoiser, x, cond, name, gauss = _data(args)
    schedule = denoiser.schedule
    d = x[0].numel()
    probes = args.probes if args.probes is not None else (None if d <= 64 else 8)
    gen = torch.Generator().manual_seed(args.seed + 1)
    top = start_time(schedule)
    times = logsnr_grid(args.levels, schedule, t_max=0.98 * top, denoise_to_zero=False).tolist()[:-1]
    start, rows = time.time(), []
    for t in times:
        a, s = float(schedule.alpha(torch.tensor(t))), float(schedule.sigma(torch.tensor(t)))
        x_t = a * x + s * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        fp = fokker_planck_residual(denoiser, x_t, t, cond=cond, probes=probes, generator=gen)["relative"]
        asym = jacobian_asymmetry(denoiser, x_t, t, cond=cond, probes=4, generator=gen)
        z = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        explained = gauss.explained(denoiser, t, z, cond)
        curl = loop_circulation(denoiser, x_t, t, cond=cond, points=8, generator=gen)["relative"]
        rows.append((t, s / a, float(fp.median()), float(asym.median()), explained, float(curl.median())))
    t_id = float(schedule.t_from_sigma_ratio(torch.tensor(0.01, dtype=torch.float64)))
    ids = {m: intrinsic_dimension(denoiser, x[:8], t_id, method=m, cond=None if cond is None else
                                  {k: v[:8] for k, v in cond.items()}, probes=probes, generator=gen)
           for m in ("flipd", "normal")}
    t_skip, _ = gauss.choose_time(denoiser, torch.randn(x.shape, generator=gen, dtype=torch.float64), cond=cond)
    gap = None
    if args.gap_samples:
        labels = None if cond is None else {"label": torch.arange(args.gap_samples) % (int(cond["label"].max()) + 1)}
        gap = ode_sde_gap(denoiser, tuple(x.shape[1:]), args.gap_samples, cond=labels, seed=args.seed)
    seconds = time.time() - start
    print(f"diagnose {name}: {len(x)} points per level, {d} dimensions, divergence "
          f"{'exact' if probes is None else f'by {probes} Hutchinson probes'}, {seconds:.1f} s")
    print("  noise level  Fokker-Planck residual  Jacobian asymmetry  loop curl  Gaussian explains")
    print("  (sigma/alpha)   (0: a true score)     (0: a gradient field)  (0: too)  (1: Gaussian field)")
    for t, level, fp, asym, ex, curl in rows:
        print(f"  {level:11.4g}  {fp:22.3g}  {asym:18.3g}  {curl:9.3g}  {ex:17.4f}")
    print(f"  intrinsic dimension at noise level 0.01 (median of 8 points): FLIPD {float(ids['flipd'].median()):.2f}, "
          f"normal bundle {float(ids['normal'].median()):.0f} (of {d})")
    if gap is not None:
        print(f"  ODE against SDE ({args.gap_samples} samples each, 40 and 100 evaluations): sliced W2 {gap['gap']:.3g}, "
              f"two SDE runs {gap['floor']:.3g} (a true score: about equal)")
    skip = "no skip" if t_skip >= top else f"t = {t_skip:.4g} (noise level {float(schedule.noise_to_signal(torch.tensor(t_skip))):.3g})"
    print(f"  teleportation (the Gaussian explains 99% of the field above it, beyond the model's own miss at the top): "
          f"{skip}")
    if out:
        level = None if t_skip >= top else float(schedule.noise_to_signal(torch.tensor(t_skip)))
        _picture(out, rows, name, ids, d, level)
        print(f"  wrote {out}")
    return {"rows": rows, "flipd": ids["flipd"], "normal": ids["normal"], "t_skip": t_skip, "gap": gap}


def _picture(path, rows, name, ids, d, skip_level=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import atomic_write

    levels = [r[1] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), constrained_layout=True)
    panels = [(2, "Fokker-Planck residual\n|ds/dt - grad phi| / |ds/dt| (0: a true score)", True),
              (3, "Jacobian asymmetry\n||J - J^T|| / ||J|| (0: a gradient field)", True),
              (4, "share of the field the data's Gaussian explains\n(1: Gaussian; dashed: where teleportation starts)", False)]
    for ax, (k, title, log) in zip(axes, panels):
        values = [r[k] for r in rows]
        ax.plot(levels, [max(v, 1e-12) for v in values] if log else values, "o-")
        ax.set_xscale("log")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("noise level sigma / alpha")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    if skip_level is not None:  # the noise level the rule teleports to (the skipped part is to its right)
        axes[2].axvline(skip_level, color="grey", lw=0.8, ls="--")
        axes[2].text(skip_level, 0.02, " teleport to here", fontsize=8, transform=axes[2].get_xaxis_transform())
    fig.suptitle(f"{name}: intrinsic dimension {float(ids['flipd'].median()):.1f} (FLIPD), "
                 f"{float(ids['normal'].median()):.0f} (normal bundle) of {d}", fontsize=10)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)

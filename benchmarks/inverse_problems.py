"""Posterior samplers against the exact posterior, and restorations with the shipped digits model.

    python benchmarks/inverse_problems.py            # about 40 minutes on one CPU core
    python benchmarks/inverse_problems.py --quick    # a first look

Exact part: Gaussian-mixture priors in 2-D (the ring of 8) and 64-D (8 components, seen as 1x8x8
images), linear measurements with two noise levels; the true posterior is a Gaussian mixture
(``GaussianMixture.posterior``). For each method and NFE, over ``--repeats`` measurement draws:

- mean error: ``|mean of samples - exact posterior mean| / sqrt(tr Cov_post)``;
- SW: sliced Wasserstein distance between the samples and as many exact posterior samples, next to
  the floor (two exact sample sets);
- coverage: how often a coordinate of the true signal lies in the method's central 90% interval
  (the exact posterior's own samples give about 0.9).

Digits part: inpainting, 2x super-resolution and Gaussian deblurring of real digits with the
shipped model as the prior; PSNR of the posterior mean. Results: ``docs/benchmarks/inverse_problems.{md,json}``
and ``docs/restore.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sdeflow import analytic, data, metrics, schedules  # noqa: E402
from sdeflow.metrics import psnr  # noqa: E402
from sdeflow.registry import make_operator  # noqa: E402
from sdeflow.files import atomic_write, write_json  # noqa: E402
from sdeflow.inverse import METHODS, Bound, Identity, Mask, Matrix, solve  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(os.path.dirname(HERE), "docs")


def problems(quick: bool):
    """``(name, prior, shape, {operator name: operator}, noise levels)``."""
    ring = analytic.ring_2d()
    two = {"denoise": Identity((2,)), "mask": Mask(torch.tensor([True, False])),
           "projection": Matrix(torch.tensor([[0.6, 0.8]], dtype=torch.float64))}
    mix = analytic.random_mixture(64, 8, seed=1)
    shape = (1, 8, 8)
    ops = {k: make_operator(k, shape) for k in ("denoise", "inpaint", "superres", "blur", "compressed-sensing")}
    out = [("2-D ring", ring, (2,), two, (0.05, 0.3)), ("64-D mixture", mix, shape, ops, (0.05, 0.3))]
    return out[:1] if quick else out


def score(x, post, x_true, g):
    n = x.shape[0]
    exact = post.sample(n, g)
    exact2 = post.sample(n, g)
    cov = post.covariance()
    scale = math.sqrt(float(torch.trace(cov)))
    flat = x.reshape(n, -1).double()
    lo, hi = torch.quantile(flat, 0.05, 0), torch.quantile(flat, 0.95, 0)
    t = x_true.reshape(-1)
    elo, ehi = torch.quantile(exact, 0.05, 0), torch.quantile(exact, 0.95, 0)
    return dict(mean_err=float((flat.mean(0) - post.mean()).norm()) / scale,
                sw=metrics.sliced_wasserstein(flat, exact), sw_floor=metrics.sliced_wasserstein(exact2, exact),
                coverage=float(((t >= lo) & (t <= hi)).double().mean()),
                coverage_exact=float(((t >= elo) & (t <= ehi)).double().mean()),
                finite=bool(torch.isfinite(flat).all()))


def exact_part(args, rows):
    sched = schedules.VPLinear()
    for name, prior, shape, ops, noises in problems(args.quick):
        den = prior.denoiser(sched)
        for op_name, op in ops.items():
            A = op.matrix()
            for noise in noises:
                for rep in range(args.repeats):
                    g = torch.Generator().manual_seed(100 + rep)
                    x_true = prior.sample(1, g).reshape(1, *shape)
                    y = op.measure(x_true, noise, g)[0]
                    post = prior.posterior(A, y.reshape(-1), noise)
                    for method in args.methods:
                        if method == "repaint" and not isinstance(op, Mask):
                            continue
                        for nfe in args.nfe:
                            start = time.perf_counter()
                            sol = solve(method, den, op, y, noise, nfe, args.num, seed=rep, dtype=torch.float64)
                            r = score(sol.x, post, x_true, torch.Generator().manual_seed(7 + rep))
                            rows.append(dict(problem=name, operator=op_name, noise=noise, rep=rep, method=method, nfe=nfe,
                                             used_nfe=sol.nfe, seconds=time.perf_counter() - start, **r))
                    print(f"{name} {op_name} noise {noise} rep {rep} done", flush=True)


def digits_part(args):
    from sdeflow.pretrained import load_model

    model = load_model("digits")
    den = Bound(model.denoiser, label=torch.tensor([model.num_classes]))
    d = data.digits()
    idx = list(range(0, 1797, 1797 // args.digits))[: args.digits]
    out, picture = [], []
    for op_name in ("inpaint", "superres", "blur"):
        op = make_operator(op_name, model.shape)
        for method in args.methods:
            if method == "repaint" and op_name != "inpaint":
                continue
            ps, means = [], []
            num = args.enkg_particles if method == "enkg" else 8
            for k, i in enumerate(idx):
                y = op.measure(d.x[i][None], 0.05, torch.Generator().manual_seed(k))[0]
                sol = solve(method, den, op, y, 0.05, 50, num, seed=k)
                mean = sol.x.clamp(-1, 1).mean(0)
                ps.append(psnr(mean, d.x[i]))
                means.append(mean)
            out.append(dict(operator=op_name, method=method, psnr=sum(ps) / len(ps)))
            print(f"digits {op_name} {method}: PSNR {out[-1]['psnr']:.2f} dB", flush=True)
            if method == "mmps":  # the picture (also redrawn by --digits-only --methods mmps)
                shown = op.adjoint(op.gram_solve(op(d.x[idx[:6]]), 1e-3)).clamp(-1, 1)
                picture.append((op_name, d.x[idx[:6]], shown, torch.stack(means[:6])))
    if picture:
        labelled_picture(picture, os.path.join(DOCS, "restore.png"))
    return out


def labelled_picture(blocks, path) -> None:
    """Per operator three labelled rows (truth, measurement back-projected, MMPS posterior mean with
    its PSNR above each digit)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"inpaint": "inpainting", "superres": "2x super-resolution", "blur": "deblurring"}
    cols = blocks[0][1].shape[0]
    fig, axes = plt.subplots(3 * len(blocks), cols, figsize=(1.1 * cols + 1.6, 1.25 * 3 * len(blocks)), dpi=100)
    for b, (op_name, truth, shown, means) in enumerate(blocks):
        for r, (row, label) in enumerate([(truth, "truth"), (shown, "measurement"), (means, "MMPS mean")]):
            for c in range(cols):
                ax = axes[3 * b + r, c]
                ax.imshow(((row[c, 0] + 1) / 2).clamp(0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 2:
                    ax.set_title(f"{psnr(row[c], truth[c]):.1f} dB", fontsize=7, pad=2)
            axes[3 * b + r, 0].set_ylabel(f"{names[op_name]}\n{label}" if r == 0 else label, fontsize=7)
    fig.suptitle("shipped digits model as the prior, noise 0.05, NFE 50", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def _geo(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(max(v, 1e-12)) for v in values) / len(values)) if values else float("nan")


def report(res) -> str:
    rows = res["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    nfes = sorted({r["nfe"] for r in rows})
    reps = max(r["rep"] for r in rows) + 1
    lines = ["# Posterior samplers against the exact posterior", "",
             "`python benchmarks/inverse_problems.py`. Problems: 2-D ring of 8 Gaussians (denoising, one coordinate "
             "masked, one projection) and a 64-D mixture of 8 seen as 1x8x8 images (denoising, inpainting, 2x "
             f"super-resolution, Gaussian blur, compressed sensing 16/64), each at noise 0.05 and 0.3, {reps} "
             "measurement draws each, "
             f"{res.get('num', 400)} samples per run. Mean error: distance of the sample mean to the exact posterior "
             "mean over the posterior's spread sqrt(tr Cov). SW ratio: sliced Wasserstein distance to as many exact "
             "posterior samples over the distance between two exact sample sets (1 = indistinguishable at this "
             "sample size; geometric mean over problems). Coverage: how often a coordinate of the true signal "
             "falls in the method's central 90% interval (exact posterior samples: "
             f"{sum(r['coverage_exact'] for r in rows) / len(rows):.2f} on the same draws). RePaint runs on the "
             "masks only. NFE counts network forward passes; the gradient methods (MMPS, PiGDM, DPS, SMC) also "
             "take vector-Jacobian products (MMPS 4 per evaluation).", "",
             "| method | " + " | ".join(f"NFE {n}: mean err / SW ratio / coverage" for n in nfes) + " |",
             "|---|" + "---|" * len(nfes)]
    for m in methods:
        cells = []
        for n in nfes:
            sel = [r for r in rows if r["method"] == m and r["nfe"] == n]
            if not sel:
                cells.append("-")
                continue
            me = sum(r["mean_err"] for r in sel) / len(sel)
            sw = _geo(r["sw"] / r["sw_floor"] for r in sel)
            cov = sum(r["coverage"] for r in sel) / len(sel)
            bad = sum(not r["finite"] for r in sel)
            cells.append(f"{me:.3f} / {sw:.2f} / {cov:.2f}" + (f" ({bad} non-finite)" if bad else ""))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    general = [m for m in methods if m != "repaint"]
    lines += ["", "Leaderboard (lowest SW ratio, geometric mean over all problems; RePaint, masks only, left out):", ""]
    for n in nfes:
        score = {m: _geo(r["sw"] / r["sw_floor"] for r in rows if r["method"] == m and r["nfe"] == n) for m in general}
        ranked = sorted(general, key=score.get)
        lines.append(f"- NFE {n}: " + ", ".join(f"{m} {score[m]:.2f}" for m in ranked[:4]))
    n = 50 if 50 in nfes else nfes[-1]
    problems_seen = list(dict.fromkeys((r["problem"], r["operator"], r["noise"]) for r in rows))
    lines += ["", f"SW ratio by problem at NFE {n} (mean over the draws; best in bold):", "",
              "| problem | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for prob in problems_seen:
        vals = {}
        for m in methods:
            sel = [r["sw"] / r["sw_floor"] for r in rows
                   if (r["problem"], r["operator"], r["noise"]) == prob and r["method"] == m and r["nfe"] == n]
            if sel:
                vals[m] = sum(sel) / len(sel)
        best = min(vals, key=vals.get)
        cells = [("**%.2f**" if m == best else "%.2f") % vals[m] if m in vals else "-" for m in methods]
        lines.append(f"| {prob[0]} {prob[1]} {prob[2]} | " + " | ".join(cells) + " |")
    if res.get("digits"):
        lines += ["", "## Digits (shipped model as the prior, noise 0.05, NFE 50, PSNR of the mean of 8 samples; "
                  f"enkg: of its {res.get('enkg_particles', 256)}-particle ensemble)", "",
                  "| method | inpainting | 2x super-resolution | deblurring |", "|---|---|---|---|"]
        cell = {(r["method"], r["operator"]): r["psnr"] for r in res["digits"]}
        for m in methods:
            vals = [f"{cell[(m, o)]:.2f}" if (m, o) in cell else "-" for o in ("inpaint", "superres", "blur")]
            lines.append(f"| {m} | " + " | ".join(vals) + " |")
        lines += ["", "![rows: true digits, measurement (pseudo-inverse), MMPS posterior mean; inpainting, "
                  "super-resolution, deblurring](../restore.png)"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description="Posterior samplers against the exact posterior.")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--nfe", nargs="+", type=int, default=[20, 50, 100])
    p.add_argument("--num", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--digits", type=int, default=12, help="digits restored per operator")
    p.add_argument("--enkg-particles", type=int, default=256,
                   help="ensemble size of enkg on the digits (it needs more particles than pixels)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--digits-only", action="store_true",
                   help="redo the digits rows of --methods, keeping everything else in the saved results")
    args = p.parse_args(argv)
    path = os.path.join(DOCS, "benchmarks", "inverse_problems.json")
    if args.digits_only:
        with open(path) as f:
            res = json.load(f)
        redo = digits_part(args)
        res["digits"] = [r for r in res["digits"] if r["method"] not in args.methods] + redo
        if "enkg" in args.methods:
            res["enkg_particles"] = args.enkg_particles
    else:
        rows = []
        exact_part(args, rows)
        res = {"rows": rows, "num": args.num, "enkg_particles": args.enkg_particles}
        if not args.quick:
            res["digits"] = digits_part(args)
    os.makedirs(os.path.join(DOCS, "benchmarks"), exist_ok=True)
    write_json(path, res)
    text = report(res)
    atomic_write(os.path.join(DOCS, "benchmarks", "inverse_problems.md"), lambda tmp: open(tmp, "w").write(text))
    print(text)


if __name__ == "__main__":
    main()

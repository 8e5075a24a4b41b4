"""sdeflow's stochastic samplers next to k-diffusion's and diffusers', and next to the ODE samplers.

Every method starts from exact samples of ``p_t`` at its own first time (the same data draws and
noise for all) and is judged by its distribution against the exact Gaussian mixture: the sliced
Wasserstein distance to exact data samples and the Frechet (Gaussian-moment W2) distance to the
mixture's exact mean and covariance, each printed beside its floor (what exact samples of the same
size score). Processes as in ``ode_solvers.py``: a discrete 1000-step DDPM eps-model, an
EDM-preconditioned x0-model and a rectified-flow velocity model; float32 states; counted NFE.

    python benchmarks/sde_samplers.py            # 2-D and 64-D mixtures, NFE 10 ... 200
    python benchmarks/sde_samplers.py --quick    # fewer samples and NFE 10, 50

Writes docs/benchmarks/sde_samplers.{md,json} and a plot per problem. Peers are optional.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (PROCESSES, Shared, family, fmt, problems, ratio_counts, save_json, sdeflow_denoiser,  # noqa: E402
                    write_problem_plots)
from peers import K_SDE_SAMPLERS, diffusers_runs, k_runs, load_diffusers, load_k_diffusion  # noqa: E402
from sde_exact_law import GAUSS_DIM, exact_law_rows, exact_law_table, stochastic_names  # noqa: E402

from sdeflow import GeneratorNoise, metrics, sample  # noqa: E402
from sdeflow.registry import GRIDS, SAMPLERS  # noqa: E402
from sdeflow.samplers import GottaGoFast  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks")
NFES = [10, 20, 50, 100, 200]
GRIDS_FOR = {"index": ["logsnr"], "edm": ["karras"], "t": ["uniform"]}
ODE_SAMPLERS = ["ddim", "dpm-solver++-2m", "dpm-solver++-3m", "unipc-bh2"]
GGF_TOLERANCES = [(0.1, 0.02), (0.05, 0.0078), (0.02, 0.004), (0.01, 0.002)]
SEED = 1234
#: each cell's two choices are run again from this many times the problem's draws, other ones (this
#: seed), with other noise (seed SEED + FRESH_SEED), against other exact samples
FRESH_TIMES, FRESH_SEED = 2, 1


def sampler_names(kind: str) -> list[str]:
    if kind == "ode":
        return ODE_SAMPLERS
    return stochastic_names()


def sdeflow_runs(shared: Shared, process, nfe: int, kind: str, seed: int = SEED, only=None):
    """sdeflow's samplers of ``kind`` (``"sde"`` or ``"ode"``), noise seeded with ``seed``; with
    ``only`` (a set of names as yielded), those configurations alone."""
    den = sdeflow_denoiser(shared.problem, process)
    sch = process.schedule
    for name in sampler_names(kind):
        sampler = SAMPLERS[name]()
        for gname in GRIDS_FOR[process.time_input]:
            if only is not None and f"sdeflow {name} ({gname})" not in only:
                continue
            n = next((m for m in range(1, nfe + 1) if sampler.prepare(sch, GRIDS[gname](m, sch)).nfe == nfe), None)
            if n is None:
                continue
            ts = GRIDS[gname](n, sch)
            noise = GeneratorNoise(torch.Generator().manual_seed(seed))
            r = sample(den, sampler, ts, shared.x_init(float(ts[0])).float(), noise=noise)
            yield f"sdeflow {name} ({gname})", r.x.double(), r.nfe


def ggf_runs(shared: Shared, process):
    """The adaptive SDE solver at several tolerances (its NFE is what the tolerance costs)."""
    den = sdeflow_denoiser(shared.problem, process)
    for rtol, atol in GGF_TOLERANCES:
        noise = GeneratorNoise(torch.Generator().manual_seed(SEED))
        r = sample(den, GottaGoFast(rtol=rtol, atol=atol), [1.0, 0.0], shared.x_init(1.0).float(), noise=noise)
        yield f"sdeflow gotta-go-fast (rtol {rtol}, atol {atol})", r.x.double(), r.nfe


def frechet(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> float:
    return metrics.frechet_distance(x, mean, cov)


def score(shared: Shared, x: torch.Tensor) -> dict:
    x = x.reshape(shared.problem.num, -1)
    if not bool(torch.isfinite(x).all()):
        return {"sw": math.inf, "fd": math.inf}
    mix = shared.problem.mixture
    return {"sw": metrics.sliced_wasserstein(x, shared.exact), "fd": frechet(x, mix.mean(), mix.covariance())}


def sized_problems(quick: bool) -> list:
    """The 2-D and 64-D mixtures with this benchmark's draw counts."""
    out = problems(quick)[:2]
    for problem in out:
        problem.num = (1000 if quick else 2000) if problem.shape == (2,) else (500 if quick else 1000)
    return out


def run(quick: bool, raw_path: str | None):
    ks, k_err = load_k_diffusion()
    d, d_err = load_diffusers()
    notes = [e for e in (k_err, d_err) if e]
    nfes = [10, 50] if quick else NFES
    results = []
    for problem in sized_problems(quick):
        for process in PROCESSES:
            shared = Shared(problem, process)
            mix = problem.mixture
            floors = {"sw": metrics.sliced_wasserstein(shared.exact2, shared.exact),
                      "fd": frechet(shared.exact2, mix.mean(), mix.covariance())}
            start = time.time()
            base = {"problem": problem.name, "process": process.name, "floor_sw": floors["sw"], "floor_fd": floors["fd"]}
            for nfe in nfes:
                sources = [("sde", sdeflow_runs(shared, process, nfe, "sde")), ("ode", sdeflow_runs(shared, process, nfe, "ode"))]
                if d is not None:
                    sources.append(("sde", ((n, x, c) for n, _, x, c in diffusers_runs(d, shared, process, nfe, seed=SEED))))
                if ks is not None:
                    sources.append(("sde", ((n, x, c) for n, _, x, c in k_runs(ks, shared, process, nfe, K_SDE_SAMPLERS, SEED))))
                for kind, source in sources:
                    for name, x, calls in source:
                        if calls == nfe:
                            results.append({**base, "kind": kind, "method": name, "nfe": nfe, **score(shared, x)})
                print(f"  {problem.name} / {process.name} / NFE {nfe}: {time.time() - start:.0f} s", flush=True)
            for name, x, calls in ggf_runs(shared, process):
                results.append({**base, "kind": "sde", "method": name, "nfe": calls, "adaptive": True, **score(shared, x)})
            if raw_path:
                save_json(raw_path, {"results": results, "notes": notes, "complete": False})
    exact = exact_law_rows(ks, nfes)
    return results, notes, exact


def best(rows, key="sw"):
    rows = [r for r in rows if math.isfinite(r[key])]
    return min(rows, key=lambda r: r[key]) if rows else None


def choices(results) -> dict:
    """``{(problem, process, nfe): (sdeflow's SDE row, the best peer's row, sdeflow's ODE row)}``: each
    side's configuration with the least SW on the scored draws (``None`` where a side has none)."""
    cells = {}
    for r in results:
        if not r.get("adaptive"):
            cells.setdefault((r["problem"], r["process"], r["nfe"]), []).append(r)
    return {key: (best([r for r in at if family(r["method"]) == "sdeflow" and r["kind"] == "sde"]),
                  best([r for r in at if family(r["method"]) != "sdeflow"]),
                  best([r for r in at if family(r["method"]) == "sdeflow" and r["kind"] == "ode"]))
            for key, at in cells.items()}


def rescore(results, fresh, quick: bool, raw_path: str, saved: dict) -> list:
    """Each cell's two choices (sdeflow's best SDE configuration and the best peer, chosen by SW on
    the scored draws) run again from ``FRESH_TIMES`` times as many other exact draws, with other
    noise, and scored against other exact samples: near the floor the least SW of many
    configurations is mostly the luck of the draws that choose it. Appends ``{problem, process,
    nfe, method, sw, fd, floor_sw}`` rows to ``fresh``, saved after each problem and process (an
    interrupted run resumes)."""
    (ks, _), (d, _) = load_k_diffusion(), load_diffusers()
    done = {(r["problem"], r["process"], r["nfe"]) for r in fresh}
    picks = choices(results)
    seed = SEED + FRESH_SEED
    for problem in sized_problems(quick):
        problem.num *= FRESH_TIMES
        for process in PROCESSES:
            todo = sorted((k[2], pair[:2]) for k, pair in picks.items() if k[:2] == (problem.name, process.name) and k not in done)
            if not todo:
                continue
            shared = Shared(problem, process, seed=FRESH_SEED)
            floor = metrics.sliced_wasserstein(shared.exact2, shared.exact)
            for nfe, pair in todo:
                names = {r["method"] for r in pair if r}
                sources = [sdeflow_runs(shared, process, nfe, "sde", seed, names)]
                if d is not None:
                    sources.append((n, x, c) for n, _, x, c in diffusers_runs(d, shared, process, nfe, seed=seed, only=names))
                if ks is not None:
                    sources.append((n, x, c) for n, _, x, c in k_runs(ks, shared, process, nfe, K_SDE_SAMPLERS, seed, names))
                scored = {}
                for name, x, calls in itertools.chain(*sources):
                    if calls == nfe and name in names:
                        scored[name] = {"problem": problem.name, "process": process.name, "method": name, "nfe": nfe,
                                        "floor_sw": floor, **score(shared, x)}
                if names - scored.keys():
                    raise RuntimeError(f"{problem.name} / {process.name} / NFE {nfe}: could not run "
                                       f"{sorted(names - scored.keys())} again")
                fresh += scored.values()
                print(f"  fresh draws: {problem.name} / {process.name} / NFE {nfe}: " +
                      ", ".join(f"{n} SW {v['sw']:.3g}" for n, v in scored.items()) + f" (floor {floor:.3g})", flush=True)
            save_json(raw_path, {**saved, "results": results, "fresh": fresh})
    return fresh


def write_report(results, notes, exact, path, fresh=()):
    lines = ["# Stochastic samplers: sdeflow, k-diffusion and diffusers on exact mixtures", "",
             "Written by `python benchmarks/sde_samplers.py`. Every method starts from exact samples of `p_t` at its",
             "first time and is judged by its distribution: `SW` is the sliced Wasserstein distance to exact data",
             "samples, `FD` the Frechet distance (W2 between Gaussians with the samples' and the mixture's exact",
             "mean and covariance). Both have a floor: what independent exact samples of the same size score.",
             "For each family the table shows its best configuration (sampler and grid) by SW at that NFE.",
             "k-diffusion's samplers run with their defaults (eta = 1; churn 40 in [0.05, 50] like EDM).",
             f"The `fresh` columns run sdeflow's SDE choice and the peer's choice again from {FRESH_TIMES} times as many "
             "other exact draws, with other noise, against other exact samples (floor beside them): near the floor the "
             "least SW of many configurations on the draws that choose it is mostly those draws' luck, and on other "
             "draws neither choice keeps it. Those columns are the measure.", ""]
    lines += [f"- {n}" for n in notes]
    again = {(r["problem"], r["process"], r["nfe"], r["method"]): r for r in fresh}
    picks = choices(results)
    summary, body = [], []
    for prob in dict.fromkeys(r["problem"] for r in results):
        for proc in dict.fromkeys(r["process"] for r in results):
            rows = [r for r in results if r["problem"] == prob and r["process"] == proc and not r.get("adaptive")]
            if not rows:
                continue
            f_floor = next((r["floor_sw"] for r in fresh if r["problem"] == prob and r["process"] == proc), math.nan)
            body += ["", f"## {prob}, {proc}", "", f"Floors: SW {rows[0]['floor_sw']:.3g}, FD {rows[0]['floor_fd']:.3g}; "
                     f"on the fresh draws SW {f_floor:.3g}", "",
                     "| NFE | sdeflow SDE best | SW | FD | best peer | SW | FD | peer SW / sdeflow SW | sdeflow ODE best | SW | FD | "
                     "fresh: sdeflow SW | peer SW | peer / sdeflow |",
                     "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
            for nfe in sorted({r["nfe"] for r in rows}):
                ours, peer, ode = picks[(prob, proc, nfe)]
                ratio = peer["sw"] / ours["sw"] if ours and peer else math.nan
                f_ours, f_peer = (again.get((prob, proc, nfe, r["method"])) if r else None for r in (ours, peer))
                f_ratio = f_peer["sw"] / f_ours["sw"] if f_ours and f_peer else math.nan
                summary.append((prob, proc, nfe, ratio, ours, peer, ode, f_ratio))

                def cell(r, full=False):
                    if not r:
                        return ["-", "-", "-"]
                    return [r["method"] if full else r["method"].split(" ", 1)[1], fmt(r["sw"]), fmt(r["fd"])]
                again_cells = [fmt(f_ours["sw"]) if f_ours else "-", fmt(f_peer["sw"]) if f_peer else "-",
                               f"{f_ratio:.2f}" if math.isfinite(f_ratio) else "-"]
                body.append("| " + " | ".join([str(nfe)] + cell(ours) + cell(peer, True) + [f"{ratio:.2f}"] + cell(ode)
                                              + again_cells) + " |")
            ggf = [r for r in results if r["problem"] == prob and r["process"] == proc and r.get("adaptive")]
            if ggf:
                body += ["", "Adaptive (Gotta Go Fast), by tolerance: " + "; ".join(
                    f"{r['method'].split('(')[1].rstrip(')')}: NFE {r['nfe']}, SW {fmt(r['sw'])}, FD {fmt(r['fd'])}" for r in ggf)]
            body += ["", f"![distribution error vs NFE]({plot_name(prob)})"]
    lines += [counts(summary, 3, "On the draws that choose them"), "", counts(summary, 7, "On fresh draws, with fresh noise")]
    lines += body
    table, exact_summary = exact_law_table(exact)
    lines += ["", f"## Exact weak error on a {GAUSS_DIM}-D Gaussian", "",
              "With Gaussian data every sampler here is affine in its input and its noise, so the exact law of its",
              "output follows from running it on probes (`sdeflow.analytic.gaussian_output_law`; k-diffusion's",
              "samplers through their `noise_sampler`): the W2 distance to the data below has no sampling noise.",
              "k-diffusion's churn samplers draw with `torch.randn_like` and cannot be probed; diffusers' schedulers",
              "draw internally too.", "", table]
    lines += ["", "## Every sdeflow stochastic sampler (64-D mixture, SW on its best grid)", "", sampler_table(results)]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return summary, exact_summary


def counts(summary, column: int, where: str) -> str:
    return ratio_counts((c[column] for c in summary), where, "sdeflow's best stochastic configuration (by SW)", "SW")


def sampler_table(results, problem="64-D mixture", nfes=(10, 50, 200)) -> str:
    rows = [r for r in results if r["problem"] == problem and family(r["method"]) == "sdeflow" and r["kind"] == "sde"
            and not r.get("adaptive")]
    procs = list(dict.fromkeys(r["process"] for r in rows))
    names = list(dict.fromkeys(r["method"].split(" ")[1] for r in rows))
    out = ["| sampler | " + " | ".join(f"{p.split(' (')[0]}, NFE {n}" for p in procs for n in nfes) + " |",
           "|" + " --- |" * (1 + len(procs) * len(nfes))]
    for name in names:
        cells = []
        for p in procs:
            for n in nfes:
                hits = [r["sw"] for r in rows if r["process"] == p and r["nfe"] == n and r["method"].split(" ")[1] == name]
                cells.append(fmt(min(hits)) if hits else "-")
        out.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot_name(problem: str) -> str:
    return "sde_" + problem.split()[0].lower().replace("-", "") + ".png"


def write_plots(results, folder):
    series = [("sdeflow SDE", lambda r: family(r["method"]) == "sdeflow" and r["kind"] == "sde" and not r.get("adaptive"), "-o"),
              ("sdeflow ODE", lambda r: family(r["method"]) == "sdeflow" and r["kind"] == "ode", "-.d"),
              ("k-diffusion", lambda r: family(r["method"]) == "k-diffusion", ":^"),
              ("diffusers", lambda r: family(r["method"]) == "diffusers", "--s")]

    def draw(ax, rows):
        for label, keep, style in series:
            pts = [(n, best([r for r in rows if r["nfe"] == n and keep(r)])) for n in sorted({r["nfe"] for r in rows})]
            pts = [(n, b["sw"]) for n, b in pts if b]
            if pts:
                ax.loglog(*zip(*pts), style, label=f"best {label}")
        ax.axhline(rows[0]["floor_sw"], color="gray", lw=0.8, ls=":", label="floor (exact samples)")

    write_problem_plots(results, folder, plot_name, draw, "sliced Wasserstein to the data")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, NFE 10 and 50 only")
    parser.add_argument("--out", default=OUT, help="folder for the report and plots")
    parser.add_argument("--from-json", action="store_true", help="rebuild the report from the saved raw results")
    parser.add_argument("--fresh", action="store_true", help="only run each cell's two choices again on fresh draws "
                        "(the cells not yet rerun, from the saved results), then write the report")
    args = parser.parse_args()
    if args.fresh and (args.from_json or args.quick):
        parser.error("--fresh reruns the saved results' choices: it takes no --from-json or --quick")
    os.makedirs(args.out, exist_ok=True)
    raw = os.path.join(args.out, "sde_samplers.json")
    if args.from_json or args.fresh:
        if not os.path.exists(raw):
            parser.error(f"no saved results at {raw}: run the benchmark first")
        with open(raw) as f:
            data = json.load(f)
        results, notes, exact, fresh = data["results"], data["notes"], data["exact"], data.get("fresh", [])
    else:
        results, notes, exact = run(args.quick, raw)
        data, fresh = {"results": results, "notes": notes, "exact": exact, "complete": True}, []
        save_json(raw, data)
    if not args.from_json:
        fresh = rescore(results, fresh, args.quick, raw, data)
    summary, exact_summary = write_report(results, notes, exact, os.path.join(args.out, "sde_samplers.md"), fresh)
    write_plots(results, args.out)
    for prob, proc, nfe, ratio, ours, peer, ode, f_ratio in summary:
        print(f"{prob:14s} {proc:32s} NFE {nfe:3d}: best peer SW / best sdeflow SW = {ratio:.2f}, on fresh draws "
              f"{f_ratio:.2f} (sdeflow {ours['method'] if ours else '-'}; peer {peer['method'] if peer else '-'}; "
              f"ODE {ode['sw'] if ode else float('nan'):.3g})")
    for proc, nfe, ratio in exact_summary:
        print(f"exact Gaussian {proc:32s} NFE {nfe:3d}: best k-diffusion W2 / best sdeflow W2 = {ratio:.2f}")


if __name__ == "__main__":
    main()

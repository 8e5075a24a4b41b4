"""Processes pinned at a source on exact mixture posteriors: sdeflow's samplers on the residual against the
processes' own published samplers (written from their papers in ``bridge_peers.py``).

    python benchmarks/bridges.py            # about 50 minutes on one CPU core
    python benchmarks/bridges.py --quick    # a first look

Problems: pairs ``x1 = A x0 + noise_std n`` with ``x0`` a Gaussian mixture, so ``p(x0 | x1)`` is an exact
mixture (:class:`sdeflow.bridges.PairedMixture`) and the oracle gives the exact ``x_hat``:

- ``ring-2d/link``: the ring of 8 through a 2x2 link (noise 0.3), the problem the default grid's two
  constants (:func:`sdeflow.bridges.bridge_grid`) were chosen on;
- ``ring-2d/mask``: the ring with its second coordinate unobserved (noise 0.3);
- ``mixture-64d/superres``: 8 full-covariance components in 64-D (seen as 8x8 images), the source the
  2x2 block means (2x super-resolution's back-projection) plus noise 0.1;
- ``mixture-64d/mask``: the same with the lower half of each image unobserved.

Processes: DDBM's VP bridge, I2SB's bridge and IR-SDE's mean-reverting SDE. For each source the samplers
draw as many restorations as exact posterior draws; the error is the sliced Wasserstein distance between
them, averaged over the sources, next to the floor (two exact sample sets). sdeflow runs its samplers on
the residual over :func:`~sdeflow.bridges.bridge_grid`; each peer runs on its own grid. Results:
``docs/benchmarks/bridges.{md,json}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bridge_peers as peers  # noqa: E402
from common import budget_for, save_json, write_report  # noqa: E402
from sdeflow import analytic, metrics  # noqa: E402
from sdeflow.bridges import PROCESSES, PairedMixture, bridge_grid, bridge_steps, sample_bridge  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(os.path.dirname(HERE), "docs", "benchmarks")
SDEFLOW = ("unipc-bh2", "dpm-solver++-3m", "dbim")
SDEFLOW_NFE = (3, 5, 10, 20)


def problems(quick: bool):
    """``(name, pairs, sources, draws per source)``."""
    ring = analytic.ring_2d()
    link = torch.tensor([[1.0, 0.3], [0.0, 0.5]], dtype=torch.float64)
    mask2 = torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64))
    mix = analytic.random_mixture(64, 8, structure="full", seed=3)
    block = torch.zeros(64, 64, dtype=torch.float64)
    for i in range(64):
        r, c = divmod(i, 8)
        for j in range(64):
            rr, cc = divmod(j, 8)
            if rr // 2 == r // 2 and cc // 2 == c // 2:
                block[i, j] = 0.25
    lower = torch.diag((torch.arange(64) < 32).to(torch.float64))
    n2, n64 = (1000, 400) if quick else (3000, 1500)
    out = [("ring-2d/link", PairedMixture(ring, link, 0.3), 4, n2), ("ring-2d/mask", PairedMixture(ring, mask2, 0.3), 4, n2),
           ("mixture-64d/superres", PairedMixture(mix, block, 0.1), 3, n64),
           ("mixture-64d/mask", PairedMixture(mix, lower, 0.1), 3, n64)]
    return out[::2] if quick else out


def peer_runs(name: str, quick: bool):
    """``(label, nfe budgets, run(denoise, process, x1, budget, generator) -> (x, nfe))`` of a process' own samplers."""
    if name == "ddbm-vp":
        def ddbm(den, proc, x1, steps, g):
            return peers.ddbm(den, proc, x1, peers.ddbm_grid(proc, steps), g, churn=0.33)

        def dbim(order):
            return lambda den, proc, x1, n, g: peers.dbim(den, proc, x1, peers.dbim_grid(n - 1), g, order=order)
        return [("DDBM Heun (churn 0.33)", (4, 8, 17, 34) if quick else (4, 8, 17, 34, 67), ddbm),
                ("DBIM (eta 0)", (5, 10, 20, 100) if quick else (5, 10, 20, 50, 100, 200), dbim(1)),
                ("DBIM 3rd order", (5, 10, 20), dbim(3))]
    if name == "i2sb":
        def i2sb(den, proc, x1, n, g):
            return peers.i2sb(den, proc, x1, torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64), g)
        return [("I2SB", (5, 10, 20, 100) if quick else (5, 10, 20, 50, 100, 200), i2sb)]

    def irsde(den, proc, x1, n, g):
        return peers.irsde(den, proc, x1, torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64), g)
    return [("IR-SDE Euler-Maruyama", (10, 20, 100) if quick else (10, 20, 50, 100, 200, 500), irsde)]


def evaluate(pairs: PairedMixture, n_sources: int, draws: int, run) -> tuple[float, int]:
    """Mean sliced Wasserstein distance over the sources of ``run(x1, generator) -> (x, nfe)`` to exact draws."""
    total, nfe = 0.0, 0
    for k in range(n_sources):
        _, x1 = pairs.sample(1, torch.Generator().manual_seed(100 + k))
        src = x1.expand(draws, pairs.dim).clone()
        ref = pairs.sample_posterior(src, torch.Generator().manual_seed(200 + k))
        x, nfe = run(src, torch.Generator().manual_seed(300 + k))
        total += metrics.sliced_wasserstein(x, ref)
    return total / n_sources, nfe


def floor(pairs, n_sources, draws) -> float:
    return evaluate(pairs, n_sources, draws, lambda src, g: (pairs.sample_posterior(src, g), 0))[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results, lines, summary = [], [], []
    start = time.perf_counter()
    for prob, pairs, n_sources, draws in problems(args.quick):
        fl = floor(pairs, n_sources, draws)
        for pname in ("ddbm-vp", "i2sb", "ir-sde"):
            proc = PROCESSES[pname]()
            den = pairs.denoiser(proc)
            rows = {}
            for sampler in SDEFLOW:
                if sampler == "dbim" and not proc.pinned:
                    continue
                label = f"sdeflow {sampler}"
                for nfe in SDEFLOW_NFE:
                    steps = bridge_steps(proc, sampler, nfe)

                    def run(src, g, sampler=sampler, steps=steps):
                        res = sample_bridge(den, sampler, bridge_grid(proc, steps), src, generator=g)
                        return res.x, res.nfe
                    err, used = evaluate(pairs, n_sources, draws, run)
                    rows.setdefault(label, {})[used] = err
            for label, budgets, fn in peer_runs(pname, args.quick):
                for budget in budgets:
                    def run(src, g, fn=fn, budget=budget):
                        def denoise(x, t):
                            return den(x - float(proc.abc(float(t))[1]) * src, t, source=src)
                        return fn(denoise, proc, src, budget, g)
                    err, used = evaluate(pairs, n_sources, draws, run)
                    rows.setdefault(label, {})[used] = err
            for label, curve in rows.items():
                results.append({"problem": prob, "process": pname, "method": label, "floor": fl,
                                "curve": {str(k): v for k, v in sorted(curve.items())}})
            peer_curves = {k: v for k, v in rows.items() if not k.startswith("sdeflow")}
            best_peer_100 = min((e for c in peer_curves.values() for n, e in c.items() if n >= 100), default=float("nan"))
            ours = {n: min(c[n] for k, c in rows.items() if k.startswith("sdeflow") and n in c) for n in (5, 10)}
            need = {n: min(budget_for(ours[n], c) for c in peer_curves.values()) for n in (5, 10)}
            lines.append(f"| {prob} | {pname} | {fl:.4f} | {ours[5]:.4f} | {ours[10]:.4f} | {best_peer_100:.4f} | "
                         f"{need[5]:.0f} | {need[10]:.0f} |")
            print(lines[-1], f"({time.perf_counter() - start:.0f} s)", flush=True)
            for label, curve in rows.items():
                print("   ", label, " ".join(f"{n}:{e:.4f}" for n, e in sorted(curve.items())), flush=True)
    head = ["| problem | process | floor | sdeflow NFE 5 | sdeflow NFE 10 | best peer at NFE >= 100 | "
            "peer NFE for sdeflow's NFE-5 error | peer NFE for sdeflow's NFE-10 error |",
            "|---|---|---|---|---|---|---|---|"]
    detail = ["## Every curve (sliced Wasserstein distance at each NFE)", "",
              "| problem | process | method | errors by NFE |", "|---|---|---|---|"]
    for r in results:
        detail.append(f"| {r['problem']} | {r['process']} | {r['method']} | "
                      + ", ".join(f"{n}: {e:.4f}" for n, e in r["curve"].items()) + " |")
    intro = ("Written by `python benchmarks/bridges.py`" + (" --quick" if args.quick else "") + ". Errors: sliced "
             "Wasserstein distance to exact posterior draws, averaged over the sources; floor: between two exact "
             "sample sets. sdeflow's NFE-5 and NFE-10 cells are its best sampler there (unipc-bh2, dpm-solver++-3m, or "
             "dbim after the boot step, on `bridge_grid`). 'peer NFE for ...' is the budget the best of the "
             "process' own samplers needs for sdeflow's error (log-log interpolation; inf: not reached at its largest "
             "budget).")
    summary = head + lines
    save_json(os.path.join(DOCS, "bridges.json"), results)
    write_report(os.path.join(DOCS, "bridges.md"), "Bridges on exact mixture posteriors", intro, summary, detail)


if __name__ == "__main__":
    main()

"""The stochastic samplers' exact weak error on a Gaussian, for ``benchmarks/sde_samplers.py``: with
Gaussian data every sampler here is affine in its input and its noise, so the exact law of its output
follows from probe runs (``sdeflow.analytic.gaussian_output_law``; k-diffusion's samplers through their
``noise_sampler``), and the W2 distance to the data has no sampling noise."""

from __future__ import annotations

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import PROCESSES, family, fmt  # noqa: E402
from peers import K_SDE_SAMPLERS  # noqa: E402

from sdeflow.registry import GRIDS, SAMPLERS  # noqa: E402


def stochastic_names() -> list[str]:
    """sdeflow's stochastic samplers on a fixed grid (the adaptive one has its own rows)."""
    return [n for n, make in SAMPLERS.items() if make().stochastic and not make().adaptive]


# the exact-law comparison is cheap: there sdeflow gets as many grids as the peers
EXACT_GRIDS = {"index": ["logsnr", "karras", "trailing"], "edm": ["karras", "logsnr"], "t": ["uniform", "logsnr", "karras"]}
GAUSS_DIM = 16


def k_output_law(ks, fn: str, kw: dict, mixture, process, sigmas: torch.Tensor):
    """Exact per-coordinate mean and variance of a k-diffusion sampler's output on one diagonal
    Gaussian: the sampler is affine in its input and its noise draws, so it is run on probes (the
    mean input, a unit input shift, one unit noise draw at a time) through its ``noise_sampler``."""
    sampling, _ = ks
    sch = process.schedule
    mu, var = mixture.means[0], mixture.cov.var[0]
    rho0 = float(sigmas[0])

    def model(y, sigma, **kwargs):
        t = sch.t_from_sigma_ratio(sigma.to(torch.float64))
        a = sch.alpha(t).reshape(-1, 1)
        return mixture.x_hat(y * a, sch, t)

    calls = []

    def counting(sigma, sigma_next):
        calls.append(None)
        return torch.zeros(1, mu.numel(), dtype=torch.float64)

    getattr(sampling, fn)(model, mu[None].clone(), sigmas, disable=True, noise_sampler=counting, **kw)
    n = len(calls)
    k = iter(range(n))

    def probe(sigma, sigma_next):
        out = torch.zeros(2 + n, mu.numel(), dtype=torch.float64)
        out[2 + next(k)] = 1.0
        return out

    y = mu.expand(2 + n, -1).clone()
    y[1] += 1.0
    out = getattr(sampling, fn)(model, y, sigmas, disable=True, noise_sampler=probe, **kw)
    m, gain, b = out[0], out[1] - out[0], out[2:] - out[0]
    return m, gain * gain * (var + rho0 * rho0) + (b * b).sum(0)


def exact_law_rows(ks, nfes):
    """Exact W2 between the output law and the data, sdeflow and k-diffusion, on a 16-D Gaussian."""
    from sdeflow import analytic

    from peers import k_sigma_range

    g = analytic.random_mixture(GAUSS_DIM, 1, seed=11)
    rows = []
    for process in PROCESSES:
        sch = process.schedule
        for nfe in nfes:
            for name in stochastic_names():
                sampler = SAMPLERS[name]()
                if sampler.couples_batch:
                    continue
                for gname in EXACT_GRIDS[process.time_input]:
                    n = next((m for m in range(1, nfe + 1) if sampler.prepare(sch, GRIDS[gname](m, sch)).nfe == nfe), None)
                    if n is None:
                        continue
                    m, v = analytic.gaussian_output_law(g, sampler, sch, GRIDS[gname](n, sch))
                    rows.append({"process": process.name, "nfe": nfe, "method": f"sdeflow {name} ({gname})",
                                 "w2": analytic.gaussian_w2(m, v, g.means[0], g.cov.var[0])})
            if ks is None:
                continue
            sampling, _ = ks
            smin, smax = k_sigma_range(process)
            for sname, (fn, kw, nfe_of) in K_SDE_SAMPLERS.items():
                if "s_churn" in kw:  # draws with torch.randn_like, which cannot be probed
                    continue
                steps = next((m for m in range(1, nfe + 2) if nfe_of(m) == nfe), None)
                if steps is None:
                    continue
                for gname, sig in [("karras", sampling.get_sigmas_karras(steps, smin, smax, 7.0, "cpu")),
                                   ("exponential", sampling.get_sigmas_exponential(steps, smin, smax, "cpu"))]:
                    m, v = k_output_law(ks, fn, kw, g, process, sig.to(torch.float64))
                    rows.append({"process": process.name, "nfe": nfe, "method": f"k-diffusion {sname} ({gname})",
                                 "w2": analytic.gaussian_w2(m, v, g.means[0], g.cov.var[0])})
    return rows


def exact_law_table(rows) -> tuple[str, list]:
    procs = list(dict.fromkeys(r["process"] for r in rows))
    nfes = sorted({r["nfe"] for r in rows})
    out = ["| process | NFE | sdeflow best | W2 | k-diffusion best | W2 | k-diffusion / sdeflow |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    summary = []
    for p in procs:
        for n in nfes:
            at = [r for r in rows if r["process"] == p and r["nfe"] == n]
            ours = min((r for r in at if family(r["method"]) == "sdeflow"), key=lambda r: r["w2"], default=None)
            peer = min((r for r in at if family(r["method"]) != "sdeflow"), key=lambda r: r["w2"], default=None)
            ratio = peer["w2"] / ours["w2"] if ours and peer else math.nan
            summary.append((p, n, ratio))
            out.append(f"| {p} | {n} | {ours['method'].split(' ', 1)[1] if ours else '-'} | {fmt(ours['w2']) if ours else '-'} | "
                       f"{peer['method'].split(' ', 1)[1] if peer else '-'} | {fmt(peer['w2']) if peer else '-'} | {ratio:.2f} |")
    return "\n".join(out), summary

"""Per-step solver overhead with a near-free network on an image-sized batch (8 x 4 x 64 x 64).

The network returns a stored eps tensor, so the time per step is what the solver itself costs:
coefficients, conversions, state updates, bookkeeping. The same DPM-Solver++(2M) update is timed in
sdeflow (through ``sample``, with its finiteness check), diffusers' DPMSolverMultistepScheduler,
k-diffusion's ``sample_dpmpp_2m`` (with its discrete eps-model wrapper) and a minimal hand-written
loop with precomputed coefficients and in-place updates: the arithmetic limit.

    python benchmarks/overhead.py
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import timed_together  # noqa: E402
from peers import load_diffusers, load_k_diffusion  # noqa: E402

from sdeflow import grids, sample  # noqa: E402
from sdeflow.denoisers import ModelDenoiser  # noqa: E402
from sdeflow.samplers import DPMSolverPP  # noqa: E402
from sdeflow.schedules import ddpm_linear  # noqa: E402

SHAPE = (8, 4, 64, 64)


def overhead_table(repeats: int = 21, steps: int = 50) -> str:
    torch.manual_seed(0)
    eps = torch.randn(SHAPE)
    x0 = torch.randn(SHAPE)
    net = lambda x, c: eps  # noqa: E731  near-free eps network
    sch = ddpm_linear()
    ts = grids.discrete_grid(steps, sch, "linspace")
    rows = {}

    den = ModelDenoiser(net, sch, "eps", time_input="index")
    solver = DPMSolverPP(order=2, variant="midpoint")
    rows["sdeflow DPMSolverPP(2M) via sample()"] = lambda: sample(den, solver, ts, x0)
    rows["sdeflow, finiteness check off"] = lambda: sample(den, solver, ts, x0, check_finite=False)

    # The arithmetic limit: eps -> x_hat (2 passes) and the 2M update (3 passes), coefficients precomputed.
    plan = solver.prepare(sch, ts)
    a, s = sch.alpha(ts).tolist(), sch.sigma(ts).tolist()

    def minimal():
        x, prev = x0.clone(), None
        for i in range(steps):
            c_x, c_hat, c_hist = plan.coef[i][:3]
            c_hist = c_hist or (c_hat,)  # the final step to t = 0 is the plain denoising step
            d = torch.add(x, net(x, i), alpha=-s[i]).mul_(1.0 / a[i])
            x.mul_(c_x).add_(d, alpha=c_hist[0])
            if len(c_hist) > 1:
                x.add_(prev, alpha=c_hist[1])
            prev = d
        return x

    rows["minimal hand-written loop (same update)"] = minimal

    d, _ = load_diffusers()
    if d is not None:
        sched = d.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                              beta_schedule="linear", solver_order=2)

        def run_diffusers():
            sched.set_timesteps(steps)
            x = x0
            for t in sched.timesteps:
                x = sched.step(net(x, t), t, x).prev_sample
            return x

        rows["diffusers DPMSolverMultistepScheduler (2M)"] = run_diffusers
    ks, _ = load_k_diffusion()
    if ks is not None:
        sampling, external = ks

        class Eps(torch.nn.Module):
            def forward(self, x, t):
                return eps

        kden = external.DiscreteEpsDDPMDenoiser(Eps(), sch.alphas_cumprod.float(), quantize=False)
        sigmas = kden.get_sigmas(steps)
        rows["k-diffusion sample_dpmpp_2m"] = lambda: sampling.sample_dpmpp_2m(kden, x0 * sigmas[0], sigmas, disable=True)
    per_step = {k: v / steps * 1e6 for k, v in timed_together(rows, repeats).items()}
    ours = per_step["sdeflow DPMSolverPP(2M) via sample()"]
    lines = [f"Tensor {'x'.join(map(str, SHAPE))} float32, {steps} steps, {torch.get_num_threads()} CPU threads, "
             f"median of {repeats} runs, the loops timed in rotation.", "",
             "| loop | us per step | sdeflow / this |", "| --- | --- | --- |"]
    for k, v in per_step.items():
        lines.append(f"| {k} | {v:.0f} | {ours / v:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    print(overhead_table())

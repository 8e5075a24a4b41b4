"""Inversion and gradients through sampling, measured on exact problems.

1. Explicit inversion (each sampler's own steps on the reversed grid): round-trip RMS (invert, then
   sample back) on the 2-D ring mixture with the exact field, VP linear, Karras grid ending at
   t_min (no final jump to 0), at 10, 20 and 50 steps per direction; and on a flow (rectified flow)
   at equal NFE per direction, first against second order (the midpoint rule: RF-Solver).
2. Exact inversion of the sampling map (fixed-point or Newton): worst round trip, NFE spent and
   iterations, on the 2-D ring and a 16-D mixture, at 10 and 20 steps.
3. Reversible samplers: inversion by undoing their steps (worst round trip, noise scale, NFE) on the
   2-D ring for VP, rectified flow and EDM; their forward error against the exact flow map of a
   4-D Gaussian next to their base solvers' at equal NFE.
4. Next to diffusers' inverse schedulers (DDIMInverseScheduler, DPMSolverMultistepInverseScheduler
   2M, each with its sampling scheduler) on the discrete 1000-step DDPM-linear eps-model of the 2-D
   ring (the exact field, float32 as users run): round-trip RMS at equal NFE per direction.
5. Gradients through sampling: peak tensor memory (sdeflow.profiling.PeakMemory) and time of sampling
   plus backward for an MLP denoiser (width 512, batch 64), plain autograd against
   gradient="checkpoint" (DPM-Solver++(2M)) and gradient="reversible" (BDIA), at 10, 100 and 1000 steps.

    python benchmarks/inversion.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from sdeflow import ModelDenoiser, analytic, grids, sample
from sdeflow.inversion import invert
from sdeflow.profiling import PeakMemory
from sdeflow.registry import SAMPLERS
from sdeflow.schedules import EDM, RectifiedFlow, VPLinear

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import PROCESSES, Problem, oracle_network, sdeflow_denoiser  # noqa: E402
from peers import load_diffusers  # noqa: E402

DETERMINISTIC = sorted(n for n, make in SAMPLERS.items() if not make().stochastic and not make().adaptive)
REVERSIBLE = sorted(n for n, make in SAMPLERS.items() if make().reversible)
SCHEDULES = {"VP linear": VPLinear(), "rectified flow": RectifiedFlow(), "EDM": EDM()}
EXACT = ["ddim", "heun", "dpm-solver-2", "dpm-solver++-2m", "dpm-solver++-3m", "unipc-bh2", "ipndm"]


def _grid(n, sch):
    return grids.karras_grid(n, sch, denoise_to_zero=False)


def explicit_table(steps) -> str:
    mix, sch = analytic.ring_2d(), VPLinear()
    rows = ["| sampler | " + " | ".join(f"{n} steps" for n in steps) + " |", "|---|" + "---:|" * len(steps)]
    for name in DETERMINISTIC:
        cells = []
        for n in steps:
            x = mix.sample_t(512, sch, float(_grid(n, sch)[-1]), torch.Generator().manual_seed(0))[0]
            cells.append(f"{invert(mix.denoiser(sch), SAMPLERS[name](), _grid(n, sch), x).round_trip_rms:.2e}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


#: First- and second-order explicit inversions of a flow, compared at equal NFE (midpoint: RF-Solver).
FLOW_INVERSIONS = ["euler", "heun", "midpoint", "heun3", "dpm-solver++-2m", "unipc-bh2", "bdia"]


def flow_table(nfes) -> str:
    """Explicit inversion round trip on a flow (2-D ring, rectified flow) at equal NFE per direction."""
    mix, sch = analytic.ring_2d(), RectifiedFlow()
    rows = ["| sampler | NFE/step | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|---:|" + "---:|" * len(nfes)]
    for name in FLOW_INVERSIONS:
        sampler = SAMPLERS[name]()
        cells = []
        for n in nfes:
            ts = _grid(n // sampler.nfe_per_step, sch)
            x = mix.sample_t(512, sch, float(ts[-1]), torch.Generator().manual_seed(0))[0]
            method = "exact" if sampler.reversible else "explicit"  # a reversible sampler undoes its steps
            cells.append(f"{invert(mix.denoiser(sch), sampler, ts, x, method=method).round_trip_rms:.2e}")
        label = f"{name} (undone)" if sampler.reversible else name
        rows.append(f"| {label} | {sampler.nfe_per_step} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def exact_table(steps) -> str:
    problems = {"2-D ring": analytic.ring_2d(), "16-D mixture": analytic.random_mixture(16, 4, structure="full", seed=2)}
    sch = VPLinear()
    rows = ["| problem | sampler | steps | method | worst round trip | converged | NFE | iterations |",
            "|---|---|---:|---|---:|---|---:|---:|"]
    for pname, mix in problems.items():
        for name in EXACT:
            for n in steps:
                x = mix.sample_t(256, sch, float(_grid(n, sch)[-1]), torch.Generator().manual_seed(1))[0]
                r = invert(mix.denoiser(sch), SAMPLERS[name](), _grid(n, sch), x, method="exact")
                share = float((r.round_trip <= 1e-9 * x.pow(2).mean(1).sqrt().clamp(min=1)).double().mean())
                rows.append(f"| {pname} | {name} | {n} | {r.method} | {float(r.round_trip.max()):.1e} | "
                            f"{share:.0%} | {r.nfe} | {r.iterations} |")
    return "\n".join(rows)


def reversible_table(steps) -> str:
    ring = analytic.ring_2d()
    rows = ["| schedule | sampler | steps | worst round trip | noise std / sigma_max | NFE (invert + sample back) |",
            "|---|---|---:|---:|---:|---:|"]
    for sname, sch in SCHEDULES.items():
        for name in REVERSIBLE:
            for n in steps:
                ts = _grid(n, sch)
                x = ring.sample_t(256, sch, float(ts[-1]), torch.Generator().manual_seed(0))[0]
                r = invert(ring.denoiser(sch), SAMPLERS[name](), ts, x, method="exact")
                rows.append(f"| {sname} | {name} | {n} | {float(r.round_trip.max()):.1e} | "
                            f"{float(r.noise.std()) / float(sch.sigma(ts[0])):.3g} | {r.nfe} + {r.round_trip_nfe} |")
    return "\n".join(rows)


def forward_table(nfes) -> str:
    """Forward error (RMS over 256 samples of the distance to the exact flow map, 4-D Gaussian)."""
    g = analytic.random_mixture(4, 1, structure="full", seed=3)

    def error(name, sch, n):
        ts = _grid(n, sch)
        x = g.sample_t(256, sch, float(ts[0]), torch.Generator().manual_seed(0))[0]
        r = sample(g.denoiser(sch), SAMPLERS[name](), ts, x)
        return float((r.x - g.flow_map(x, sch, float(ts[0]), float(ts[-1]))).pow(2).sum(1).mean().sqrt()), r.nfe

    runs = [("ddim", lambda n: n), ("bdia", lambda n: n), ("obelm", lambda n: n), ("edict", lambda n: n // 2),
            ("heun", lambda n: n // 2), ("reversible-heun", lambda n: n - 1), ("dpm-solver++-2m", lambda n: n)]
    rows = ["| schedule | NFE | " + " | ".join(name for name, _ in runs) + " |", "|---|---:|" + "---:|" * len(runs)]
    for sname, sch in SCHEDULES.items():
        for nfe in nfes:
            cells = []
            for name, steps in runs:
                err, used = error(name, sch, steps(nfe))
                assert used == nfe, (name, used, nfe)
                cells.append(f"{err:.2e}")
            rows.append(f"| {sname} | {nfe} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def peer_table(steps) -> str:
    """Round trip (invert, sample back) of 512 ring samples under the discrete DDPM eps-model, float32:
    diffusers' inverse schedulers paired with their samplers against sdeflow's inversions on the
    linspace grid of training steps at equal NFE per direction (an inversion's NFE in brackets where it
    differs)."""
    process = PROCESSES[0]
    rows = ["| data | method | " + " | ".join(f"NFE {n}" for n in steps) + " |", "|---|---|" + "---:|" * len(steps)]
    for pname, mix in {"2-D ring": analytic.ring_2d(),
                       "16-D mixture": analytic.random_mixture(16, 4, structure="full", seed=2)}.items():
        rows += _peer_rows(pname, mix, process, steps)
    return "\n".join(rows)


def _peer_rows(pname, mix, process, steps):
    problem = Problem(pname, mix, (mix.dim,), 512)
    x = mix.sample(512, torch.Generator().manual_seed(0)).float()
    net = oracle_network(problem, process)
    rms = lambda y: float((y.double() - x.double()).pow(2).mean().sqrt())  # noqa: E731
    rows = []
    d, why = load_diffusers()
    if d is None:
        rows.append(f"| {pname} | diffusers: {why} |" + " |" * len(steps))
    else:
        base = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
        pairs = {"diffusers DDIMInverseScheduler + DDIMScheduler": (
                     d.DDIMInverseScheduler(**base), d.DDIMScheduler(**base)),
                 "diffusers DPMSolverMultistepInverseScheduler + DPMSolverMultistepScheduler (2M)": (
                     d.DPMSolverMultistepInverseScheduler(**base), d.DPMSolverMultistepScheduler(**base, final_sigmas_type="sigma_min"))}
        for label, (up, down) in pairs.items():
            cells = []
            for n in steps:
                y, calls = x.clone(), 0
                for sched in (up, down):
                    sched.set_timesteps(n)
                    for t in sched.timesteps:
                        out = net(y, torch.full((y.shape[0],), float(t), dtype=torch.float64))
                        y, calls = sched.step(out, t, y).prev_sample, calls + 1
                assert calls == 2 * n, (label, calls)
                cells.append(f"{rms(y):.2e}")
            rows.append(f"| {pname} | {label} | " + " | ".join(cells) + " |")
    den, sch = sdeflow_denoiser(problem, process), process.schedule
    for label, name, method in [("sdeflow ddim, explicit", "ddim", "explicit"),
                                ("sdeflow dpm-solver++-2m, explicit", "dpm-solver++-2m", "explicit"),
                                ("sdeflow unipc-bh2, explicit", "unipc-bh2", "explicit"),
                                ("sdeflow ddim, exact (fixed point)", "ddim", "exact"),
                                ("sdeflow bdia, exact (undone)", "bdia", "exact")]:
        cells = []
        for n in steps:
            ts = sch.t_from_index(torch.linspace(999, 0, n + 1, dtype=torch.float64).round())
            r = invert(den, SAMPLERS[name](), ts, x, method=method)
            extra = f" ({r.nfe})" if r.nfe != n else ""
            cells.append(f"{r.round_trip_rms:.2e}{extra}")
        rows.append(f"| {pname} | {label} | " + " | ".join(cells) + " |")
    return rows


def gradient_table(steps, name="dpm-solver++-2m", modes=("autograd", "checkpoint")) -> str:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 512), torch.nn.SiLU(), torch.nn.Linear(512, 512), torch.nn.SiLU(),
                              torch.nn.Linear(512, 2))
    den = ModelDenoiser(lambda x, t: mlp(torch.cat([x, t[:, None]], 1)), VPLinear(), "eps")
    x0 = torch.randn(64, 2)
    rows = ["| sampler | steps | " + " | ".join(f"{m} peak MiB" for m in modes) + " | "
            + " | ".join(f"{m} s" for m in modes) + " |", "|---|---:|" + "---:|" * (2 * len(modes))]
    for n in steps:
        ts = grids.uniform_grid(n, t_min=1e-3)
        with torch.no_grad():
            sample(den, SAMPLERS[name](), ts, x0)  # per-time input cache, outside the measurement
        mem, sec = [], []
        for mode in modes:
            x = x0.clone().requires_grad_()
            with PeakMemory() as m:
                sample(den, SAMPLERS[name](), ts, x, gradient=mode).x.pow(2).sum().backward()
            x = x0.clone().requires_grad_()
            start = time.perf_counter()
            sample(den, SAMPLERS[name](), ts, x, gradient=mode).x.pow(2).sum().backward()
            mem.append(f"{m.peak / 2 ** 20:.2f}")
            sec.append(f"{time.perf_counter() - start:.2f}")
        rows.append(f"| {name} | {n} | " + " | ".join(mem) + " | " + " | ".join(sec) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer step counts")
    parser.add_argument("--only", choices=["peers"], help="print one table only")
    args = parser.parse_args()
    if args.only == "peers":
        print(peer_table([10, 20] if args.quick else [10, 20, 50]))
        return
    print("## Explicit inversion: round-trip RMS, 2-D ring, VP linear\n")
    print(explicit_table([10, 20] if args.quick else [10, 20, 50]))
    print("\n## Explicit inversion of a flow at equal NFE: round-trip RMS, 2-D ring, rectified flow\n")
    print(flow_table([10, 20] if args.quick else [10, 20, 50]))
    print("\n## Exact inversion (tol 1e-9, float64)\n")
    print(exact_table([20] if args.quick else [10, 20]))
    print("\n## Reversible samplers: inversion by undoing the steps (2-D ring, float64)\n")
    print(reversible_table([5, 20] if args.quick else [5, 10, 20, 50]))
    print("\n## Forward error at equal NFE against the exact flow map (4-D Gaussian, Karras grid)\n")
    print(forward_table([10, 20] if args.quick else [10, 20, 40]))
    print("\n## Next to diffusers' inverse schedulers: round-trip RMS, 2-D ring, DDPM eps-model (float32)\n")
    print(peer_table([10, 20] if args.quick else [10, 20, 50]))
    print("\n## Gradients through sampling: peak tensor memory and time (sampling + backward)\n")
    grad_steps = [10, 100] if args.quick else [10, 100, 1000]
    print(gradient_table(grad_steps))
    print()
    print(gradient_table(grad_steps, "bdia", ("autograd", "checkpoint", "reversible")))


if __name__ == "__main__":
    main()

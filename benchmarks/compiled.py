"""Time per sampling step: the eager loop, a compiled network, the compiled fixed-grid program and
(on CUDA) the captured graph, side by side with diffusers' scheduler loop on the same network.

Networks: a tiny MLP (the shipped ``moons`` model, batch 4096), the shipped ``digits`` UNet (batch
256 of 1 x 8 x 8) and, when diffusers is installed, a small randomly initialised ``UNet2DModel``
(batch 8 of 3 x 32 x 32). Sampler: DPM-Solver++(2M), 10 steps on a DDPM-linear schedule. Each row
is the median over repeats run in rotation (``common.timed_together``), divided by the number of
steps; "ratio" is the eager loop's time over the row's. Compilation time (the first call) is listed
apart. A second table times one draw of seeded per-sample noise against ``torch.randn``.

    python benchmarks/compiled.py [--device cuda] [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import timed_together  # noqa: E402
from peers import load_diffusers  # noqa: E402

from sdeflow import SeededNoise, GeneratorNoise, grids, sample  # noqa: E402
from sdeflow.compiled import FixedGridLoop  # noqa: E402
from sdeflow.denoisers import ModelDenoiser  # noqa: E402
from sdeflow.pretrained import load_model  # noqa: E402
from sdeflow.samplers import DPMSolverPP  # noqa: E402
from sdeflow.schedules import ddpm_linear  # noqa: E402

STEPS = 10


def networks(device, diffusers):
    """``name -> (denoiser, batch shape, diffusers-style eps function or None)``."""
    out = {}
    moons = load_model("moons", device)
    out["MLP (moons), 4096 x 2"] = (moons.denoiser, (4096, *moons.shape), None)
    digits = load_model("digits", device)
    out["UNet (digits), 256 x 1 x 8 x 8"] = (digits.denoiser, (256, *digits.shape), None)
    if diffusers is not None:
        torch.manual_seed(0)
        unet = diffusers.UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64),
                                     layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                     up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8).to(device).eval()
        net = lambda x, c: unet(x, c).sample  # noqa: E731
        den = ModelDenoiser(net, ddpm_linear(), "eps", time_input="index")
        out["diffusers UNet2DModel, 8 x 3 x 32 x 32"] = (den, (8, 3, 32, 32), net)
    return out


def step_table(device, repeats: int) -> tuple[str, list[str]]:
    d, _ = load_diffusers()
    rows, compile_notes = [], []
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for name, (den, shape, eps_net) in networks(device, d).items():
        sch = den.schedule
        ts = grids.logsnr_grid(STEPS, sch) if not hasattr(sch, "num_steps") else grids.discrete_grid(STEPS, sch, "trailing")
        x0 = torch.randn(shape, device=device)
        solver = DPMSolverPP(order=2)
        fns = {}

        def timed(fn):
            def run():
                with torch.no_grad():
                    out = fn()
                sync()
                return out
            return run

        fns["sdeflow.sample, eager"] = timed(lambda: sample(den, solver, ts, x0).x)
        compiled_net = ModelDenoiser(torch.compile(den.model), sch, den.parameterization, time_input=den.time_input)
        fns["sdeflow.sample, torch.compile(network)"] = timed(lambda: sample(compiled_net, solver, ts, x0).x)
        loop = FixedGridLoop(den, solver, STEPS)
        fns["FixedGridLoop, eager"] = timed(lambda: loop(x0, ts).x)
        if eps_net is None or device.type == "cuda":  # on a CPU, inductor takes many minutes on the larger UNet
            program = FixedGridLoop(den, solver, STEPS).compile()
            fns["FixedGridLoop.compile() (fullgraph)"] = timed(lambda: program(x0, ts).x)
        if device.type == "cuda":
            graphed = FixedGridLoop(den, solver, STEPS).compile(mode="max-autotune-no-cudagraphs")
            first = time.perf_counter()
            captured = graphed.cuda_graph(x0, ts)
            compile_notes.append(f"{name}: compile + capture {time.perf_counter() - first:.1f} s")
            fns["FixedGridLoop compiled, one CUDA graph"] = timed(lambda: captured(x0, ts).x)
        if eps_net is not None:
            sched = d.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                                  beta_schedule="linear", solver_order=2, timestep_spacing="trailing")

            def run_diffusers():
                sched.set_timesteps(STEPS, device=device)
                x = x0
                for t in sched.timesteps:
                    x = sched.step(eps_net(x, t.expand(x.shape[0])), t, x).prev_sample
                return x

            fns["diffusers DPMSolverMultistepScheduler loop"] = timed(run_diffusers)
        for key in ("sdeflow.sample, torch.compile(network)", "FixedGridLoop.compile() (fullgraph)"):
            if key not in fns:
                continue
            first = time.perf_counter()
            fns[key]()
            compile_notes.append(f"{name}: {key}: first call {time.perf_counter() - first:.1f} s")
            print(compile_notes[-1], file=sys.stderr, flush=True)
        times = timed_together(fns, repeats)
        base = times["sdeflow.sample, eager"]
        for key, sec in times.items():
            rows.append(f"| {name} | {key} | {1e3 * sec / STEPS:.3f} | {base / sec:.2f} |")
    head = "| network | loop | ms / step | ratio |\n|---|---|---:|---:|"
    return head + "\n" + "\n".join(rows), compile_notes


def noise_table(device, repeats: int) -> str:
    rows = []
    for shape in [(256, 1, 8, 8), (4096, 2), (64, 3, 64, 64)]:
        like = torch.empty(shape, device=device)
        seeded, plain = SeededNoise(list(range(shape[0]))), GeneratorNoise()
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        def draw(src):
            def run():
                src(like, 3)
                sync()
            return run

        times = timed_together({"seeded": draw(seeded), "randn": draw(plain)}, repeats)
        rows.append(f"| {' x '.join(map(str, shape))} | {1e3 * times['seeded']:.3f} | {1e3 * times['randn']:.3f} |")
    return "| noise shape | SeededNoise ms | torch.randn ms |\n|---|---:|---:|\n" + "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    table, notes = step_table(device, args.repeats)
    print(table)
    print()
    print("\n".join(notes))
    print()
    print(noise_table(device, args.repeats))


if __name__ == "__main__":
    main()

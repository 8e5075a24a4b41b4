"""Shared pieces of the benchmarks: exact problems, oracle "networks" in each process's native
parameterization, shared initial noise, reference solves and metrics."""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import dataclass

import torch

from sdeflow import analytic, grids, metrics, sample
from sdeflow.denoisers import ModelDenoiser
from sdeflow.parameterizations import as_parameterization
from sdeflow.samplers import DPMSolver
from sdeflow.schedules import EDM, RectifiedFlow, ddpm_linear

NFES = [4, 5, 6, 8, 10, 12, 15, 20, 50]


@dataclass
class Problem:
    name: str
    mixture: analytic.GaussianMixture
    shape: tuple
    num: int


def problems(quick: bool = False) -> list[Problem]:
    out = [Problem("2-D mixture", analytic.ring_2d(), (2,), 1000 if quick else 2000),
           Problem("64-D mixture", analytic.random_mixture(64, 8, seed=1), (64,), 300 if quick else 500),
           Problem("3x32x32 mixture", analytic.random_mixture(3 * 32 * 32, 4, seed=2), (3, 32, 32), 32)]
    return out[:2] if quick else out


@dataclass
class Process:
    """A trained-model stand-in: schedule, what the network predicts and how it takes time."""

    name: str
    schedule: object
    parameterization: str
    time_input: str


PROCESSES = [Process("DDPM eps (1000 discrete steps)", ddpm_linear(), "eps", "index"),
             Process("EDM x0 (preconditioned)", EDM(), "edm", "edm"),
             Process("rectified-flow velocity", RectifiedFlow(), "velocity", "t")]


def time_of(process: Process, c: torch.Tensor) -> torch.Tensor:
    """Invert the network's time input back to t (float64)."""
    sch, c = process.schedule, c.to(torch.float64)
    if process.time_input == "index":
        return sch.t_from_index(c)
    if process.time_input == "edm":
        return sch.t_from_sigma_ratio(torch.exp(4 * c))
    return c


def oracle_network(problem: Problem, process: Process):
    """``net(x_in, c) -> F``: the exact field in the process's parameterization, as a network sees it."""
    p = as_parameterization(process.parameterization)
    sch, mix = process.schedule, problem.mixture

    def net(x_in, c):
        t = time_of(process, c)
        x_t = x_in.to(torch.float64) / p.input_scale(sch, t).reshape(-1, *([1] * (x_in.ndim - 1)))
        return mix.network_output(x_t, sch, t, p).to(x_in.dtype)

    return net


#: The hand grids the ODE benchmark runs for each kind of network time input (and the tuning benchmark
#: compares its fits with).
HAND_GRIDS = {"index": ["auto", "logsnr", "karras", "quadratic", "trailing"],
              "edm": ["auto", "karras", "logsnr", "polyexponential"],
              "t": ["auto", "uniform", "logsnr", "quadratic", "shifted"]}

#: the ODE benchmark runs each cell's two choices again from this many times the problem's draws,
#: other ones (this seed); benchmarks/tuning.py runs its best tuned configurations on the same draws
FRESH_TIMES, FRESH_SEED = 4, 1


def fresh_shared(problem: Problem, process: Process) -> "Shared":
    """The ODE benchmark's fresh draws of ``problem`` (:data:`FRESH_TIMES` times as many, seed
    :data:`FRESH_SEED`)."""
    return Shared(Problem(problem.name, problem.mixture, problem.shape, FRESH_TIMES * problem.num), process,
                  seed=FRESH_SEED)


def sdeflow_denoiser(problem: Problem, process: Process) -> ModelDenoiser:
    return ModelDenoiser(oracle_network(problem, process), process.schedule, process.parameterization,
                         time_input=process.time_input)


class Shared:
    """The same data draws and noise for every method: ``x_init(t0) = alpha(t0) x + sigma(t0) eps``."""

    def __init__(self, problem: Problem, process: Process, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.problem, self.process = problem, process
        self.data = problem.mixture.sample(problem.num, g)
        self.eps = torch.randn(self.data.shape, generator=g, dtype=torch.float64)
        self.exact = problem.mixture.sample(problem.num, g)
        self.exact2 = problem.mixture.sample(problem.num, g)
        self._refs: dict[tuple, torch.Tensor] = {}

    def x_init(self, t0: float) -> torch.Tensor:
        """The shared start at ``t0``, snapped to 7 decimals (float32 grids of peers differ below
        that, and one reference solve then serves them all)."""
        t0 = round(t0, 7)
        sch = self.process.schedule
        x = float(sch.alpha(t0)) * self.data + float(sch.sigma(t0)) * self.eps
        return x.reshape(self.problem.num, *self.problem.shape)

    def reference(self, t0: float, t_end: float = 0.0, steps: int = 600) -> torch.Tensor:
        """Third-order single-step DPM-Solver++ (in logSNR, where the field is smooth even for a
        discrete schedule) on a fine grid (uniform in t merged with Karras noise levels and the
        schedule's knots), float64, from ``x_init(t0)`` to ``t_end``."""
        t0, t_end = round(t0, 7), round(t_end, 7)
        key = (t0, t_end, steps)
        if key not in self._refs:
            sch = self.process.schedule
            ts = grids.reference_grid(torch.tensor([t0, t_end], dtype=torch.float64), sch, steps)
            den = self.problem.mixture.denoiser(sch)
            self._refs[key] = sample(den, DPMSolver(order=3, form="data"), ts, self.x_init(t0)).x
        return self._refs[key]

    def score(self, span: tuple[float, float], x_out: torch.Tensor) -> dict:
        ref = self.reference(*span)
        return {"rms": metrics.rms_error(x_out, ref), "median": metrics.median_error(x_out, ref),
                "sw": metrics.sliced_wasserstein(x_out, self.exact)}

    def sw_floor(self) -> float:
        return metrics.sliced_wasserstein(self.exact2, self.exact)


def tail_scores(x: torch.Tensor, ref: torch.Tensor) -> list[float]:
    """RMS and median endpoint error of ``x`` against ``ref``, and the share of the squared error that
    the worst 1% of draws carry."""
    sq = (x.reshape(len(x), -1) - ref.reshape(len(ref), -1)).pow(2).sum(1).sort(descending=True).values
    return [metrics.rms_error(x, ref), metrics.median_error(x, ref), float(sq[:math.ceil(0.01 * len(sq))].sum() / sq.sum())]


class Counter:
    """Wraps a callable and counts its calls (the NFE a method really took)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def timed_together(fns: dict, repeats: int = 15) -> dict:
    """Median wall time (seconds) of each function, running them in rotation so that drifts of a
    shared machine affect all alike (one warm-up round first)."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def fmt(v: float) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.2e}"


def save_json(path: str, data) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file, then a rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def ratio_counts(ratios, where: str, who: str, measure: str) -> str:
    """A report's sentence on peer / sdeflow ratios (above 1: sdeflow ahead): how often ``who`` is at
    least as accurate as the best peer's choice, and twice as accurate, by ``measure``."""
    r = [v for v in ratios if math.isfinite(v)]
    if not r:
        return f"{where}: not measured yet."
    return (f"{where}, {who} is at least as accurate as the best peer's in {sum(v >= 1 for v in r)} of {len(r)} cells "
            f"and at least twice as accurate in {sum(v >= 2 for v in r)} (peer {measure} / sdeflow {measure} "
            f"{min(r):.2f}-{max(r):.2f}, median {statistics.median(r):.2f}).")


def family(method: str) -> str:
    """``sdeflow``, ``diffusers``, ``k-diffusion`` or ``flow_matching``: the first word of a result's method name."""
    return method.split(" ", 1)[0]


def write_problem_plots(results, folder: str, plot_name, draw, ylabel: str) -> None:
    """One figure per problem with a log-log panel per process; ``draw(ax, rows)`` plots a panel."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("skipped plots: matplotlib is not installed")
        return
    for prob in dict.fromkeys(r["problem"] for r in results):
        procs = list(dict.fromkeys(r["process"] for r in results if r["problem"] == prob))
        fig, axes = plt.subplots(1, len(procs), figsize=(5 * len(procs), 4.2), dpi=110, squeeze=False)
        for ax, proc in zip(axes[0], procs):
            draw(ax, [r for r in results if r["problem"] == prob and r["process"] == proc])
            ax.set_title(proc, fontsize=9)
            ax.set_xlabel("NFE")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(prob)
        fig.tight_layout()
        fig.savefig(os.path.join(folder, plot_name(prob)))
        plt.close(fig)


def load_json(path: str) -> dict:
    """The results file ``path`` (``{}`` before the first result)."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def locked_update(path: str, update) -> None:
    """Apply ``update`` to the results file ``path`` (``{}`` at first) and save it atomically, one
    writer at a time: shards of one benchmark share the file, and an interrupted run resumes from it."""
    import fcntl

    from sdeflow.files import write_json

    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = load_json(path)  # re-read: another shard may have saved since
        update(results)
        write_json(path, results)


def shard(text: str) -> tuple[int, int]:
    """``--shard i/k`` (an argparse type): the work items whose index is ``i`` modulo ``k``."""
    import argparse

    try:
        i, k = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shard is i/k with whole numbers 0 <= i < k, got {text!r}") from None
    if not 0 <= i < k:
        raise argparse.ArgumentTypeError(f"a shard is i/k with 0 <= i < k, got {text!r}")
    return i, k


def write_report(path: str, title: str, intro: str, *sections: list[str]) -> None:
    """A Markdown report ``# title``, ``intro`` and the sections' lines, written atomically; says where."""
    from sdeflow.files import atomic_write

    text = [f"# {title}", "", intro, ""]
    for lines in sections:
        text += [*lines, ""]
    atomic_write(path, lambda tmp: open(tmp, "w").write("\n".join(text)))
    print(f"wrote {path}")


def budget_for(err: float, curve: dict[int, float]) -> float:
    """The budget the curve needs for ``err`` (log-log interpolation; ``inf`` beyond its last budget)."""
    pts = sorted(curve.items())
    if err >= pts[0][1]:  # no better than the top's smallest budget: counted as that budget (conservative)
        return pts[0][0]
    for (n0, e0), (n1, e1) in zip(pts, pts[1:]):
        if e1 <= err <= e0:
            if e0 == e1:
                return n0
            w = math.log(e0 / err) / math.log(e0 / e1)
            return math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0)))
    return math.inf

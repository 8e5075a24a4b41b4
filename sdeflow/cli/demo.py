"""``sdeflow demo``: sample the embedded 2-D Gaussian mixture and measure the error exactly.

The start is an exact sample of ``p_{t_max}`` from the oracle, so every error is the sampler's:
the endpoint error against a fine reference solve of the same probability-flow ODE from the same
start, and the sliced Wasserstein distance to exact data samples, printed beside its floor (the
distance between two independent exact sample sets of the same size).
"""

from __future__ import annotations

import sys

import torch

from .. import analytic, metrics
from ..files import atomic_write, check_output
from ..grids import reference_grid
from ..sampling import sample
from ..samplers import Heun
from .sample_cmd import noise_source, resolve


def run_demo(args) -> dict:
    if args.out:
        check_output(args.out, (".png",))
        pyplot_module()
    schedule, sampler, ts, steps = resolve(args)
    mixture = analytic.ring_2d()
    denoiser = mixture.denoiser(schedule)
    gen = torch.Generator().manual_seed(args.seed)
    x_init, _ = mixture.sample_t(args.num, schedule, float(ts[0]), gen)
    result = sample(denoiser, sampler, ts, x_init.float(), noise=noise_source(args, gen))
    exact, exact2 = mixture.sample(args.num, gen), mixture.sample(args.num, gen)
    report = {
        "sampler": args.sampler, "schedule": args.schedule, "grid": args.grid, "steps": steps, "nfe": result.nfe,
        "endpoint_rms": None, "endpoint_median": None,
        "sliced_w2": metrics.sliced_wasserstein(result.x, exact),
        "sliced_w2_floor": metrics.sliced_wasserstein(exact2, exact),
    }
    print(f"sampler {args.sampler} on {args.schedule}, {args.grid} grid: {steps} step{'s' if steps != 1 else ''}, NFE {result.nfe}")
    if sampler.stochastic:  # a stochastic sampler follows no ODE path: only its distribution is judged
        print("  stochastic sampler: judged by its distribution only")
    else:
        reference = sample(denoiser, Heun(), reference_grid(ts, schedule), x_init,
                           progress=getattr(args, "progress", False) and sys.stderr.isatty()).x
        report["endpoint_rms"] = metrics.rms_error(result.x, reference)
        report["endpoint_median"] = metrics.median_error(result.x, reference)
        print(f"  endpoint error vs reference ODE solve: RMS {report['endpoint_rms']:.4g}, "
              f"median {report['endpoint_median']:.4g}")
    print(f"  sliced W2 to exact samples: {report['sliced_w2']:.4g}; two sets of {args.num} exact samples are "
          f"{report['sliced_w2_floor']:.4g} apart (the noise floor: at or below it, this many samples cannot tell "
          "the sampler from exact)")
    if args.out:
        _plot(mixture, result.x, report, args.out)
        print(f"  wrote {args.out}")
    return report


def pyplot_module():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("writing the PNG needs matplotlib: pip install 'sdeflow[plots]' (or pass --out '')") from None
    return plt


def show_image(ax, img) -> None:
    """Draw one ``(C, H, W)`` image in [-1, 1] (C = 1: grey) on a matplotlib axis, pixels unsmoothed."""
    img = ((img.float().clamp(-1, 1) + 1) / 2).cpu()
    ax.imshow(img[0] if img.shape[0] == 1 else img.permute(1, 2, 0), cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")


def save_figure(fig, path: str) -> None:
    """Write a matplotlib figure as a PNG, atomically, and free it."""
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def _plot(mixture, x, report, path):
    plt = pyplot_module()
    lim = 3.2
    u = torch.linspace(-lim, lim, 300, dtype=torch.float64)
    gx, gy = torch.meshgrid(u, u, indexing="xy")
    logp = mixture.log_prob(torch.stack([gx.flatten(), gy.flatten()], 1)).reshape(gx.shape)
    fig, ax = plt.subplots(figsize=(5.6, 5.6), dpi=120)
    ax.imshow(logp.exp().numpy(), extent=(-lim, lim, -lim, lim), origin="lower", cmap="Blues")
    pts = x.double().numpy()
    ax.scatter(pts[:, 0], pts[:, 1], s=2, c="#d62728", alpha=0.6, linewidths=0)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ax.legend(handles=[Line2D([], [], marker="o", ls="", color="#d62728", markersize=4, label=f"{len(pts)} samples"),
                       Patch(color=plt.get_cmap("Blues")(0.7), label="true density (exact)")],
              loc="upper right", fontsize=8, framealpha=0.9)
    endpoint = "" if report["endpoint_rms"] is None else f"endpoint RMS {report['endpoint_rms']:.3g}, "
    ax.set_title(f"{report['sampler']} / {report['schedule']} / {report['grid']}, NFE {report['nfe']}\n"
                 f"{endpoint}sliced W2 {report['sliced_w2']:.3g} (floor {report['sliced_w2_floor']:.3g})", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)

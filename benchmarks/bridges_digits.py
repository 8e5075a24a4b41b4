"""The shipped digits restoration bridge against the best zero-shot posterior sampler on the same task.

    python benchmarks/bridges_digits.py            # about 8 minutes on one CPU core
    python benchmarks/bridges_digits.py --quick    # a first look

Task: 2x super-resolution of real digits with measurement noise 0.05 (``digits-bridge``'s operator): each
digit ``x`` is measured, ``y = A x + 0.05 n``, and restored once. ``digits-bridge`` restores the
back-projected ``y`` at NFE 5 and 10 (its default sampler on ``bridge_grid``); MMPS, the best of
``sdeflow.inverse`` on the exact problems (docs/benchmarks/inverse_problems.md), restores ``y`` with the
shipped ``digits`` model as the prior at NFE 50 and 100. Measured on the restorations:

- consistency: the RMS of ``A x_hat - y`` (the noise alone gives about 0.05);
- PSNR against the true digit;
- accuracy of the shipped digits classifier on the restorations (true labels), and the Frechet distance of its
  features to real digits (``digits_quality.Scorer``; its floor: between two halves of the real digits).

Both models were trained on all 1797 digits; the digits restored here are among them. Results:
``docs/benchmarks/bridges_digits.{md,json}`` and ``docs/bridges.png`` (degraded, bridge NFE 5, MMPS NFE 100, truth).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import save_json, write_report  # noqa: E402
from digits_quality import Scorer  # noqa: E402
from sdeflow import data  # noqa: E402
from sdeflow.bridges import restore  # noqa: E402
from sdeflow.inverse import Bound, solve  # noqa: E402
from sdeflow.inverse.operator_names import make_operator  # noqa: E402
from sdeflow.metrics import psnr  # noqa: E402
from sdeflow.pretrained import load_model  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(os.path.dirname(HERE), "docs")


def pick(labels: torch.Tensor, per_class: int, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(10):
        idx = torch.nonzero(labels == k).flatten()
        out.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.stack(out, 1).flatten()  # class-interleaved: 0, 1, ..., 9, 0, 1, ...


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    digits = data.digits()
    idx = pick(digits.labels, 3 if args.quick else 20)
    x_true, labels = digits.x[idx], digits.labels[idx]
    bridge = load_model("digits-bridge", bridges=True)
    cfg = bridge.settings
    noise = cfg["degrade_noise"]
    op = make_operator(cfg["degrade"], bridge.shape)
    y = op.measure(x_true, noise, torch.Generator().manual_seed(0))
    source = op.back_project(y).to(x_true.dtype)
    prior = load_model("digits")
    prior_den = Bound(prior.denoiser, label=torch.tensor([prior.num_classes]))  # the unconditional prior
    scorer = Scorer()
    rows, shown = [], {}

    def measure(name, nfe, x, seconds):
        x = x.clamp(-1, 1)
        resid = (op(x.double()) - y.double()).reshape(len(x), -1)
        acc, fd = scorer.score(x.float(), labels)
        p = sum(psnr(a, b) for a, b in zip(x, x_true)) / len(x)
        rows.append({"method": name, "nfe": nfe, "consistency": float(resid.pow(2).mean().sqrt()), "psnr": p,
                     "accuracy": acc, "fd": fd, "seconds": seconds})
        shown[(name, nfe)] = x[:10]
        print(rows[-1], flush=True)

    for nfe in (5, 10):
        t0 = time.perf_counter()
        x = restore(bridge.denoiser, source, nfe, generator=torch.Generator().manual_seed(1)).x
        measure("digits-bridge", nfe, x, time.perf_counter() - t0)
    for nfe in ((20, 50) if args.quick else (50, 100)):
        t0 = time.perf_counter()
        out = [solve("mmps", prior_den, op, y[i], noise, nfe, 1, seed=i).x[0] for i in range(len(y))]
        measure("mmps (digits prior)", nfe, torch.stack(out), time.perf_counter() - t0)
    head = ["| method | NFE | consistency RMS | PSNR (dB) | accuracy | FD | seconds |", "|---|---|---|---|---|---|---|"]
    lines = [f"| {r['method']} | {r['nfe']} | {r['consistency']:.3f} | {r['psnr']:.2f} | {r['accuracy']:.3f} | "
             f"{r['fd']:.2f} | {r['seconds']:.0f} |" for r in rows]
    intro = (f"Written by `python benchmarks/bridges_digits.py`{' --quick' if args.quick else ''}: {len(idx)} real "
             f"digits ({len(idx) // 10} per class), {cfg['degrade']} with noise {noise}, one restoration each. The "
             f"noise alone gives a consistency RMS of about {noise}; the classifier's accuracy on real test digits is "
             f"{scorer.test_accuracy:.3f}, and the FD between two halves of the real digits is {scorer.floor:.2f}.")
    save_json(os.path.join(DOCS, "benchmarks", "bridges_digits.json"), rows)
    write_report(os.path.join(DOCS, "benchmarks", "bridges_digits.md"), "Digits restoration: the bridge against "
                 "zero-shot posterior sampling", intro, head + lines)
    picture(os.path.join(DOCS, "bridges.png"), source[:10], shown[("digits-bridge", 5)],
            shown[rows[-1]["method"], rows[-1]["nfe"]], x_true[:10], rows[-1]["nfe"])


def picture(path, source, bridge, zero_shot, truth, nfe):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sdeflow.cli.demo import save_figure, show_image

    names = ["degraded (2x down, noise 0.05)", "digits-bridge, NFE 5", f"MMPS zero-shot, NFE {nfe}", "truth"]
    fig, axes = plt.subplots(4, 10, figsize=(10, 4.6), dpi=100, layout="constrained")
    for r, (imgs, name) in enumerate(zip((source, bridge, zero_shot, truth), names)):
        for c in range(10):
            ax = axes[r, c]
            ax.axis("off")
            show_image(ax, imgs[c])
        axes[r, 0].set_title(name, fontsize=9, loc="left")
    save_figure(fig, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

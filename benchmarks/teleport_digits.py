"""Teleportation on the shipped digits model: Frechet distance and accuracy by the shipped classifier at
equal NFE, from the top and from the rule's ``t_skip`` with the class Gaussians.

1000 class-conditional samples (100 per class, per-sample seeds, the same noise for both runs) with
the default sampler and grid at each budget; scored as ``benchmarks/digits_quality.py`` scores them
(FD between the classifier's penultimate features of the samples and of half the real digits; its
floor is the FD between the two real halves). ``t_skip`` comes from
:meth:`~sdeflow.teleport.Teleport.choose_time` on 200 other noises (labels cycling through the
classes), as ``sdeflow sample --teleport auto`` chooses it.

    python benchmarks/teleport_digits.py      # about two minutes; writes docs/benchmarks/teleport_digits.md
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import budget_for, write_report  # noqa: E402
from digits_quality import Scorer  # noqa: E402

from sdeflow.generation import gather, generate  # noqa: E402
from sdeflow.pretrained import load_model  # noqa: E402
from sdeflow.registry import GRIDS, SAMPLERS, default_sampling, steps_for_nfe  # noqa: E402
from sdeflow.tuning.gaussian import model_gaussian  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "teleport_digits.md")
BUDGETS = [4, 5, 6, 8, 10, 15, 20, 30]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    model = load_model("shipped:digits")
    gauss = model_gaussian(model)
    sch = model.denoiser.schedule
    z = torch.randn(200, *model.shape, generator=torch.Generator().manual_seed(7919))
    t_skip, measured = gauss.choose_time(model.denoiser, z, cond={"label": torch.arange(200) % 10})
    scorer = Scorer()
    labels = torch.arange(1000) % 10
    rows = []
    for nfe in BUDGETS:
        name, grid = default_sampling(sch, nfe)
        sampler = SAMPLERS[name]()
        row = {"nfe": nfe, "sampler": f"{name} ({grid})"}
        for key, t0, tel in (("top", None, None), ("teleport", t_skip, gauss)):
            ts = GRIDS[grid](steps_for_nfe(sampler, sch, grid, nfe), sch, t_max=t0)
            x = gather(generate(model.denoiser, sampler, ts, model.shape, 1000, labels=labels, batch_size=500,
                                teleport=tel), 1)
            row[key] = scorer.score(x, labels)
        rows.append(row)
        print(f"NFE {nfe} {row['sampler']}: top FD {row['top'][1]:.3f} acc {row['top'][0]:.3f}; teleported FD "
              f"{row['teleport'][1]:.3f} acc {row['teleport'][0]:.3f}", flush=True)
    lines = ["| NFE | sampler (grid) | FD from the top | FD teleported | accuracy from the top | accuracy teleported |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['nfe']} | {r['sampler']} | {r['top'][1]:.3f} | {r['teleport'][1]:.3f} | {r['top'][0]:.3f} | "
              f"{r['teleport'][0]:.3f} |" for r in rows]
    top_curve = {r["nfe"]: r["top"][1] for r in rows}
    saved = []
    for r in rows:
        if r["nfe"] in (5, 6, 8, 10, 15, 20):
            need = budget_for(r["teleport"][1], top_curve)
            saved.append(f"NFE {r['nfe']}: " + (f"{1 - r['nfe'] / need:.0%}" if need <= BUDGETS[-1] else
                                                f"at least {1 - r['nfe'] / BUDGETS[-1]:.0%} (the top never reaches it)"))
    lines = ["Evaluations saved at equal FD (the budget the run from the top needs for the teleported run's FD, "
             "log-log interpolation): " + "; ".join(saved) + ".", ""] + lines
    shares = ", ".join(f"{t:.3f}: {f:.3f}" for t, f in measured)
    intro = (f"Written by `python benchmarks/teleport_digits.py`. The rule's `t_skip` = {t_skip:.3f} (of the top "
             f"{float(GRIDS['auto'](1, sch)[0]):.3f}), with one Gaussian per class; the share of the field each "
             f"candidate's Gaussian explains (t: share): {shares}. FD floor (two real halves): {scorer.floor:.3f}; the "
             f"classifier's test accuracy: {scorer.test_accuracy:.3f}. 1000 samples per cell.")
    write_report(OUT, "Teleportation on the shipped digits model", intro, lines)


if __name__ == "__main__":
    main()

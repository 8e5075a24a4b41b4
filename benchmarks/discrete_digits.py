"""The shipped token model of digits beside the continuous digits model, at equal network evaluations.

    python benchmarks/discrete_digits.py        # about 20 minutes on one CPU core

``digits-tokens`` (masked diffusion over the 64 pixels as tokens of 17 levels) and ``digits`` (rectified flow
over the same images) each draw 1000 class-conditional samples (100 per class, fixed seeds) per sampler and
NFE; the shipped digits classifier scores them (``sdeflow.pretrained.scoring.DigitsScorer``): accuracy (classified as
the class asked for) and the squared Frechet distance (FD) of its penultimate features to real digits. The
floors: the classifier's accuracy on its held-out real digits, and the FD between two halves of the real
digits.

Token samplers: the first-hitting sampler with a budget (exact at NFE 64 = L), ancestral steps (MDLM's; with
its caching a sequence takes fewer evaluations than steps when no token changes: the NFE column is the
steps), ReMDM remasking and discrete flow matching's Euler step; plus classifier-free guidance of the token
model at scale 2. The continuous model runs sdeflow's default sampler for each NFE (``sdeflow sample``'s
choice) and DPM-Solver++(3M).

Results: ``docs/benchmarks/discrete_digits.{md,json}``.
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
from sdeflow.discrete import TokenModel, sample_tokens  # noqa: E402
from sdeflow.generation import gather, generate  # noqa: E402
from sdeflow.pretrained.scoring import DigitsScorer  # noqa: E402
from sdeflow.pretrained import load_model  # noqa: E402
from sdeflow.registry import GRIDS, SAMPLERS, default_sampling, steps_for_nfe  # noqa: E402
from sdeflow.data.tokens import to_images  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(os.path.dirname(HERE), "docs", "benchmarks")
NFES = (8, 16, 32, 64)
TOKEN_SAMPLERS = [("first-hitting", {}), ("ancestral", {}), ("remask", {"eta": 0.1}), ("dfm-euler", {})]
N = 1000


def token_samples(model, sampler: str, nfe: int, labels: torch.Tensor, guidance: float = 1.0, **options):
    process, xs = model.denoiser.process, []
    for k in range(0, len(labels), 100):
        net = TokenModel(model.denoiser.net, process, label=labels[k:k + 100], guidance=guidance)
        g = torch.Generator().manual_seed(k)
        xs.append(sample_tokens(net, process, sampler, nfe, len(labels[k:k + 100]), model.shape[0], generator=g,
                                **options).x)
    return to_images(torch.cat(xs), model.meta["data"])


def main(argv=None):
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    torch.set_num_threads(1)
    scorer = DigitsScorer()
    labels = torch.arange(N) % 10
    tokens = load_model("digits-tokens", tokens=True)
    flow = load_model("digits")
    results, rows = [], []

    def record(model_name, sampler, nfe, x, seconds):
        acc, fd = scorer.score(x, labels)
        results.append(dict(model=model_name, sampler=sampler, nfe=nfe, accuracy=acc, fd=fd, seconds=seconds))
        rows.append(f"| {model_name} | {sampler} | {nfe} | {acc:.3f} | {fd:.2f} | {seconds:.1f} |")
        print(rows[-1], flush=True)

    for nfe in NFES:
        for name, options in TOKEN_SAMPLERS:
            start = time.perf_counter()
            x = token_samples(tokens, name, nfe, labels, **options)
            label = name + "".join(f" {k} {v}" for k, v in options.items())
            record("digits-tokens", label, nfe, x, time.perf_counter() - start)
        start = time.perf_counter()
        x = token_samples(tokens, "first-hitting", nfe, labels, guidance=2.0)
        record("digits-tokens", "first-hitting, CFG scale 2", nfe, x, time.perf_counter() - start)
        schedule = flow.denoiser.schedule
        default, grid = default_sampling(schedule, nfe)
        for name, grid_name in dict.fromkeys(((default, grid), ("dpm-solver++-3m", "auto"))):
            sampler = SAMPLERS[name]()
            ts = GRIDS[grid_name](steps_for_nfe(sampler, schedule, grid_name, nfe), schedule)
            start = time.perf_counter()
            x = gather(generate(flow.denoiser, sampler, ts, flow.shape, N, labels=labels, batch_size=500), 1)
            what = f"{name} ({grid_name} grid{', the default' if name == default else ''})"
            record("digits (continuous)", what, sampler.prepare(schedule, ts).nfe, x, time.perf_counter() - start)
    head = ["| model | sampler | NFE | accuracy | FD | seconds |", "|---|---|---|---|---|---|"]
    floors = [f"Floors: the classifier's accuracy on held-out real digits {scorer.test_accuracy:.3f}; FD between two "
              f"halves of the real digits {scorer.floor:.2f}."]
    save_json(os.path.join(DOCS, "discrete_digits.json"), dict(rows=results, fd_floor=scorer.floor,
                                                                 classifier_test_accuracy=scorer.test_accuracy, n=N))
    write_report(os.path.join(DOCS, "discrete_digits.md"), "Digits as tokens beside the continuous digits model",
                 "Written by `python benchmarks/discrete_digits.py` (one CPU core; seconds are wall-clock for 1000 "
                 "samples). 1000 class-conditional samples per row, scored by the shipped digits classifier.",
                 floors, head + rows)


if __name__ == "__main__":
    main()

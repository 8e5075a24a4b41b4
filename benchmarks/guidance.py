"""Guidance on the shipped digits model: accuracy, Frechet distance and precision / recall against
the guidance scale, per method, at NFE 10 and 20.

    python benchmarks/guidance.py          # about 10 minutes on 2 CPU cores

For each method and scale, 1000 class-conditional samples (100 per class, per-sample seeds,
``dpm-solver++-2m`` on the ``auto`` grid; CFG++ on DDIM, its own sampler) are scored with the
shipped digits classifier (``benchmarks/digits_classifier.py``): accuracy (classified as the
requested class), FD (squared Frechet distance of its 64 penultimate features to the real half
"B" of the digits) and k-NN precision / recall (k = 3) in the same features. Scale 1 of CFG is the
unguided conditional model. CFG++ takes its own scale ``lambda`` in [0, 1] (``0.2 .. 1``).
Results: ``docs/benchmarks/guidance.{md,json}`` and the picture ``docs/guidance.png``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from digits_quality import fd, real_split  # noqa: E402
from sdeflow import data, guidance  # noqa: E402
from sdeflow.files import atomic_write, write_json  # noqa: E402
from sdeflow.generation import gather, generate  # noqa: E402
from sdeflow.metrics import precision_recall  # noqa: E402
from sdeflow.pretrained import load_model, load_network  # noqa: E402
from sdeflow.registry import GRIDS, SAMPLERS, steps_for_nfe  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(os.path.dirname(HERE), "docs")
SCALES = [1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 8.0]
CFGPP_SCALES = [0.2, 0.4, 0.6, 0.8, 1.0]
INTERVAL = (0.2, 3.0)  # sigma / alpha; rectified flow: t in about (0.17, 0.75)
#: method -> (guidance method, options, interval)
METHODS = {
    "cfg": ("cfg", {}, None),
    "cfg+interval": ("cfg", {}, INTERVAL),
    "apg": ("apg", {"eta": 0.0, "momentum": -0.5, "norm_threshold": 4.0}, None),
    "cfg++": ("cfg++", {}, None),
    "cfg-zero": ("cfg-zero", {"zero_sigma": 20.0}, None),
    "auto": ("auto", {}, None),
    "auto+interval": ("auto", {}, INTERVAL),
}
N_PER_CLASS = 100


def run(model, small, method, scale, nfe, labels):
    kind, options, interval = METHODS[method]
    base = SAMPLERS["ddim" if kind == "cfg++" else "dpm-solver++-2m"]()
    schedule = model.denoiser.schedule
    ts = GRIDS["auto"](steps_for_nfe(base, schedule, "auto", nfe), schedule)
    g = guidance.guided(model.denoiser, kind, scale, interval=interval,
                        guide=small.denoiser if kind == "auto" else None, **options)
    sampler = guidance.guided_sampler(kind, base)
    start = time.perf_counter()
    x = gather(generate(g, sampler, ts, model.shape, len(labels), labels=labels, batch_size=250), 1)
    return x, g.forwards / len(labels), time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description="Guidance methods against the guidance scale on the shipped digits model.")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--nfe", nargs="+", type=int, default=[10, 20])
    p.add_argument("--scales", nargs="+", type=float, default=SCALES, help="scales of every method but CFG++")
    p.add_argument("--tag", default="", help="write guidance-TAG.{md,json} (a supplementary sweep), no picture")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, small = load_model("digits"), load_model("digits-small")
    clf, meta, _ = load_network("digits-classifier")
    digits = data.digits()
    half_a, half_b = real_split(digits.labels)
    with torch.no_grad():
        feats = clf.features(digits.x)
    real = feats[half_b]
    floor = fd(feats[half_a], real)
    floor_pr = precision_recall(real, feats[half_a])
    labels = torch.arange(10 * N_PER_CLASS) % 10
    rows, pictures = [], {}
    for nfe in args.nfe:
        for method in args.methods:
            for scale in (CFGPP_SCALES if method == "cfg++" else args.scales):
                x, forwards, seconds = run(model, small, method, scale, nfe, labels)
                with torch.no_grad():
                    f = clf.features(x)
                    acc = float((clf.head(f).argmax(1) == labels).double().mean())
                prec, rec = precision_recall(real, f)
                rows.append(dict(method=method, nfe=nfe, scale=scale, accuracy=acc, fd=fd(f, real), precision=prec,
                                 recall=rec, forwards=forwards, seconds=seconds))
                print(f"NFE {nfe:2d} {method:>14} w {scale:4.1f}: acc {acc:.3f} FD {rows[-1]['fd']:6.3f} "
                      f"P {prec:.3f} R {rec:.3f}  ({forwards:.0f} forwards/sample, {seconds:.1f} s)", flush=True)
                if method == "cfg" and nfe == 20 and not args.tag:
                    pictures[scale] = x[:10]
    name = "guidance" + (f"-{args.tag}" if args.tag else "")
    old = os.path.join(DOCS, "benchmarks", name + ".json")
    if os.path.exists(old):  # a run of some methods or NFEs replaces their rows and keeps the others
        import json

        done = {(r["method"], r["nfe"], r["scale"]) for r in rows}
        kept = [r for r in json.load(open(old))["rows"] if (r["method"], r["nfe"], r["scale"]) not in done]
        order = {m: k for k, m in enumerate(METHODS)}
        rows = sorted(kept + rows, key=lambda r: (r["nfe"], order[r["method"]], r["scale"]))
    result = dict(rows=rows, fd_floor=floor, precision_floor=floor_pr[0], recall_floor=floor_pr[1],
                  n_samples=len(labels), n_real_b=len(half_b), interval=INTERVAL,
                  options={m: METHODS[m][1] for m in METHODS}, classifier_test_accuracy=meta["test_accuracy"],
                  tag=args.tag)
    os.makedirs(os.path.join(DOCS, "benchmarks"), exist_ok=True)
    write_json(os.path.join(DOCS, "benchmarks", name + ".json"), result)
    atomic_write(os.path.join(DOCS, "benchmarks", name + ".md"), lambda tmp: open(tmp, "w").write(report(result)))
    if pictures:
        from sdeflow.data.pictures import save_samples

        save_samples(torch.cat([pictures[s] for s in sorted(pictures)]), os.path.join(DOCS, "guidance.png"), "image", nrow=10)
    print(report(result))


def report(r: dict) -> str:
    out = ["# Guidance on the shipped digits model", "",
           f"`python benchmarks/guidance.py`: {r['n_samples']} class-conditional samples per cell (100 per class), "
           "dpm-solver++-2m on the `auto` grid (CFG++: DDIM), scored by the shipped digits classifier: accuracy, "
           f"squared Frechet distance (FD) of its features to {r['n_real_b']} real digits, and k-NN precision / recall "
           f"(k = 3) in the same features. Two real halves: FD **{r['fd_floor']:.2f}**, precision "
           f"{r['precision_floor']:.3f}, recall {r['recall_floor']:.3f} (the floors). Interval: sigma/alpha in "
           f"({r['interval'][0]}, {r['interval'][1]}]. Scale 1 is the unguided conditional model for every method "
           "but CFG++ (whose lambda runs over 0.2 .. 1). Forwards: network passes per sample.", ""]
    if r.get("tag"):
        out[0] += f" ({r['tag']})"
        out += ["A supplementary sweep of the scales around 1 "
                f"(`python benchmarks/guidance.py --tag {r['tag']} --methods ... --scales ...`); the main table is "
                "[guidance.md](guidance.md).", ""]
    for nfe in sorted({row["nfe"] for row in r["rows"]}):
        out += [f"## NFE {nfe}", "", "| method | scale | accuracy | FD | precision | recall | forwards |",
                "|---|---|---|---|---|---|---|"]
        for row in (x for x in r["rows"] if x["nfe"] == nfe):
            out.append(f"| {row['method']} | {row['scale']:g} | {row['accuracy']:.3f} | {row['fd']:.2f} | "
                       f"{row['precision']:.3f} | {row['recall']:.3f} | {row['forwards']:.0f} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    main()

"""The shipped choices under classifier-free guidance: what they were not chosen for.

The configurations shipped with the digits models (``sdeflow/pretrained/<name>.grids.json``) were
chosen on the unguided conditional model, and ``sdeflow sample --guidance W`` runs them too. Here each
shipped class-conditional model is sampled with CFG at scales 2 and 4 (``sdeflow.guidance.guided``)
from 128 draws of the prior (labels cycling through the classes), with the table's default
(``sdeflow.recommended``) and with the shipped choice (``sdeflow.tuning.model_recommended``), against
the 300-step reference solve of the guided field from the same draws (``sdeflow.tuning.Teacher``).
Reported per budget: RMS and median endpoint error, and how many draws end farther than 1.0 from the
reference (in another mode: they decide the RMS of 128 draws).

    python benchmarks/shipped_guided.py                 # about 5 minutes on 2 cores

Writes ``docs/benchmarks/shipped_guided.{md,json}``.
"""

from __future__ import annotations

import argparse
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import write_report  # noqa: E402
from shipped_defaults import draws as prior_draws  # noqa: E402

from sdeflow.files import write_json  # noqa: E402
from sdeflow.guidance import guided  # noqa: E402
from sdeflow.pretrained import load_model  # noqa: E402
from sdeflow.samplers import recommended  # noqa: E402
from sdeflow.samplers.names import default_sampling  # noqa: E402
from sdeflow.tuning import Teacher, model_recommended, model_recommended_name  # noqa: E402
from sdeflow.tuning.draws import draw_errors  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "shipped_guided")
BUDGETS = (4, 6, 8, 10, 15, 20, 30)
FAR = 1.0


def errors(den, sampler, ts, x, cond, ref) -> dict:
    e = draw_errors(den, sampler, ts, x, ref, cond).sqrt()
    return {"rms": float(e.pow(2).mean().sqrt()), "median": float(e.median()), "far": int((e > FAR).sum())}


def measure(name: str, scale: float, draws: int, budgets) -> dict:
    model = load_model(name)
    den, sch = model.denoiser, model.denoiser.schedule
    x, cond = prior_draws(model, draws, seed=99)
    g = guided(den, "cfg", scale)
    ref = Teacher(g, x, cond=cond, steps=300).end
    out = {}
    for nfe in budgets:
        out[str(nfe)] = {"table": "{} ({})".format(*default_sampling(sch, nfe)), "shipped": model_recommended_name(model, nfe),
                         "table_errors": errors(g, *recommended(sch, nfe), x, cond, ref),
                         "shipped_errors": errors(g, *model_recommended(model, nfe), x, cond, ref)}
        c = out[str(nfe)]
        print(f"{name} CFG {scale:g} NFE {nfe}: table {c['table_errors']}, shipped {c['shipped_errors']}", flush=True)
    return out


def report(results: dict, draws: int) -> None:
    lines = ["| model | CFG scale | NFE | table default | RMS / median / far | shipped choice | RMS / median / far |",
             "|---|---|---|---|---|---|---|"]
    wins = {"rms": 0, "median": 0}
    cells = 0
    for key, rec in results.items():
        name, scale = key.rsplit(" ", 1)
        for nfe, c in rec.items():
            t, s = c["table_errors"], c["shipped_errors"]
            lines.append(f"| {name} | {scale} | {nfe} | {c['table']} | {t['rms']:.3g} / {t['median']:.3g} / {t['far']} | "
                         f"{c['shipped']} | {s['rms']:.3g} / {s['median']:.3g} / {s['far']} |")
            cells += 1
            for m in wins:
                wins[m] += s[m] <= t[m]
    intro = (f"`python benchmarks/shipped_guided.py`. {draws} draws of the prior per model (seed 99, labels cycling "
             "through the classes), classifier-free guidance at each scale; endpoint errors against the 300-step "
             "reference solve of the guided field from the same draws; far: draws ending more than "
             f"{FAR:g} from the reference. The shipped choice was made on the unguided model.")
    summary = [f"The shipped choice's error is at most the table's in {wins['median']} of {cells} cells by the median "
               f"and in {wins['rms']} by the RMS."]
    write_report(OUT + ".md", "The shipped choices under classifier-free guidance", intro, summary, lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["digits", "digits-small"])
    p.add_argument("--scales", nargs="+", type=float, default=[2.0, 4.0])
    p.add_argument("--nfe", nargs="+", type=int, default=list(BUDGETS))
    p.add_argument("--draws", type=int, default=128)
    args = p.parse_args(argv)
    for name in args.models:
        if not load_model(name).num_classes:
            raise SystemExit(f"{name} is not class-conditional: classifier-free guidance needs classes")
    results = {f"{name} {scale:g}": measure(name, scale, args.draws, args.nfe) for name in args.models for scale in args.scales}
    write_json(OUT + ".json", results)
    report(results, args.draws)


if __name__ == "__main__":
    main()

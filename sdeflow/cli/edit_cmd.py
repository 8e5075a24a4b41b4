"""``sdeflow edit``: move pictures from one class to another with a class-conditional model.

The input is ``--input`` (a picture or an ``.npy`` sample) or, for the digits model, the first
``--num`` digits of class ``--from`` in scikit-learn's set. Two editors (:mod:`sdeflow.editing`):

- ``inversion``: invert under ``--from`` with a deterministic sampler (default BDIA, whose steps are
  undone exactly; ``"exact"`` inversion, so any deterministic sampler's map is inverted to its
  tolerance) and sample the noise back under ``--to``; the round trip (sampling back under
  ``--from``) is printed too.
- ``flowedit``: FlowEdit, an ODE on the edited picture driven by the difference of the two classes'
  velocities at coupled noisy points; no inversion.

Both run on :func:`~sdeflow.editing.edit_grid` from ``--start``. The command prints, per editor, the
evaluations spent, how far the pictures moved (RMS per pixel in [-1, 1] units) and, for the digits
model, the shipped digits classifier's probability of the target class, and writes a picture (input
row, one row per editor) and/or an ``.npz`` of the arrays.
"""

from __future__ import annotations

import torch

from ..files import check_output, save_npz

EDITORS = ("inversion", "flowedit")

#: The picture shows at most this many inputs (the .npz holds them all).
PICTURE_COLUMNS = 16


def add_edit_parser(sub) -> None:
    from ..registry import deterministic_samplers
    from .args import positive_int

    p = sub.add_parser("edit", help="move pictures from one class to another (inversion or FlowEdit)",
                       description="Edit pictures from class --from to class --to with a class-conditional model: "
                       "by exact inversion under --from and sampling under --to, and by FlowEdit (no inversion). "
                       "Prints the evaluations spent, how far the pictures moved and (digits) the classifier's "
                       "probability of the target class; writes the pictures.")
    p.add_argument("--checkpoint", default="shipped:digits", metavar="NAME|PATH",
                   help="a class-conditional shipped model, run folder or .safetensors (default: shipped:digits)")
    p.add_argument("--input", default=None, metavar="FILE",
                   help="a picture (PNG/JPEG) or .npy sample of class --from (default for digits: the first --num "
                   "digits of that class in scikit-learn's set)")
    p.add_argument("--from", dest="source", type=int, required=True, metavar="K", help="the class the input shows")
    p.add_argument("--to", dest="target", type=int, required=True, metavar="K", help="the class to edit it into")
    p.add_argument("--method", default="both", choices=[*EDITORS, "both"],
                   help="inversion, flowedit or both (default: both)")
    deterministic = deterministic_samplers()
    p.add_argument("--sampler", default="bdia", choices=deterministic, metavar="NAME",
                   help=f"deterministic sampler of the inversion: one of {', '.join(deterministic)} (default: bdia, "
                   "exactly reversible)")
    p.add_argument("--steps", type=positive_int, default=20, help="steps of each editor (default: 20)")
    p.add_argument("--start", type=float, default=None, metavar="T",
                   help="time editing starts at: 1 (or the schedule's start) edits most; lower keeps more of the "
                   "input (default: the schedule's start)")
    p.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="classifier-free guidance scale of both classes' fields (default: none, the conditional model)")
    p.add_argument("-n", "--num", dest="num", type=positive_int, default=8,
                   help="digits to edit when no --input is given (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of FlowEdit's noise (default: 0)")
    p.add_argument("--out", nargs="+", default=["edited.png"], metavar="FILE",
                   help="one or more .png (picture) / .npz (input and edits) files; '' for none (default: edited.png)")


def _inputs(args, model) -> torch.Tensor:
    if args.input is not None:
        from .restore_cmd import read_input

        return read_input(args.input, model)[None]
    if model.meta["data"]["name"] != "digits":
        raise ValueError("give --input (a picture or .npy file): only the digits model has default inputs")
    from ..data import digits

    d = digits()
    chosen = d.x[d.labels == args.source]
    if args.num > len(chosen):
        raise ValueError(f"-n {args.num}: scikit-learn's set has {len(chosen)} digits of class {args.source}; "
                         f"ask for at most {len(chosen)}")
    return chosen[:args.num]


def _check(args, model) -> None:
    import math

    if model.num_classes == 0:
        raise ValueError("editing between classes needs a class-conditional model; this one is unconditional")
    for flag, k in (("--from", args.source), ("--to", args.target)):
        if not 0 <= k < model.num_classes:
            raise ValueError(f"{flag} {k} is not a class of this model (0..{model.num_classes - 1})")
    if args.source == args.target:
        raise ValueError(f"--from and --to are both {args.source}: give two different classes")
    if args.guidance is not None and (not math.isfinite(args.guidance) or args.guidance < 0):
        raise ValueError(f"--guidance must be a finite number >= 0, got {args.guidance}")


def run_edit(args) -> dict:
    from ..editing import edit_grid, flow_edit
    from ..guidance import guided
    from ..inversion import invert
    from ..noise import GeneratorNoise
    from ..pretrained import load_model
    from ..registry import SAMPLERS
    from ..sampling import sample

    outs = [check_output(o, (".png", ".npz"), inputs=[args.input]) for o in args.out if o]
    if any(o.lower().endswith(".png") for o in outs):
        from .demo import pyplot_module

        pyplot_module()
    model = load_model(args.checkpoint)
    _check(args, model)
    if model.kind != "image" and any(o.lower().endswith(".png") for o in outs):
        raise ValueError("pictures are for image models; write an .npz instead (--out edited.npz)")
    ts = edit_grid(args.steps, model.denoiser.schedule, args.start)
    x = _inputs(args, model)
    denoiser = model.denoiser if args.guidance is None else guided(model.denoiser, "cfg", args.guidance)
    n = x.shape[0]
    source, target = {"label": torch.full((n,), args.source)}, {"label": torch.full((n,), args.target)}
    editors = EDITORS if args.method == "both" else (args.method,)
    rows, report = {}, {}
    with torch.no_grad():
        probs = _classifier(model)
        for name in editors:
            if name == "inversion":
                sampler = SAMPLERS[args.sampler]()
                inv = invert(denoiser, sampler, ts, x, cond=source, method="exact")  # checks the round trip
                r = sample(denoiser, sampler, ts, inv.noise, cond=target, companion=inv.companion)
                r.nfe += inv.nfe
                extra = (f"; round trip under {args.source}: {inv.round_trip_rms:.2e} RMS "
                         f"({inv.round_trip_nfe} more evaluations to check)")
                label = f"inversion ({args.sampler})"
            else:
                noise = GeneratorNoise(torch.Generator().manual_seed(args.seed))
                r = flow_edit(denoiser, ts, x, source=source, target=target, noise=noise)
                extra, label = "", "FlowEdit"
            moved = float((r.x - x).pow(2).mean().sqrt())
            p = probs(r.x, args.target) if probs else None
            report[name] = {"x": r.x, "nfe": r.nfe, "moved": moved, "p_target": p}
            rows[label] = (r.x, p)
            judged = "" if p is None else f", classifier p({args.target}) {float(p.mean()):.3f}"
            print(f"{label}: NFE {r.nfe}, moved {moved:.3f} RMS{judged}{extra}")
    p_in = probs(x, args.source) if probs else None
    for out in outs:
        if out.lower().endswith(".npz"):
            save_npz(out, input=x.numpy(), ts=ts.numpy(), **{k: v["x"].numpy() for k, v in report.items()})
        else:
            _picture(out, x, p_in, rows, args, ts)
        print(f"  wrote {out}")
    return report


def _classifier(model):
    """``(x, k) -> p(k | x)`` of the shipped digits classifier for the digits models, else None."""
    if model.meta["data"]["name"] != "digits" or tuple(model.shape) != (1, 8, 8):
        return None
    from ..pretrained import load_network

    clf, _, _ = load_network("shipped:digits-classifier")
    return lambda x, k: clf(x.float()).softmax(1)[:, k]


def _picture(path, x, p_in, rows, args, ts) -> None:
    """The input row and one row per editor, each picture titled with the classifier's probability."""
    from .demo import pyplot_module, save_figure, show_image

    plt = pyplot_module()
    panels = [("input", x, p_in, args.source)] + [(label, z, p, args.target) for label, (z, p) in rows.items()]
    cols = min(x.shape[0], PICTURE_COLUMNS)  # the .npz holds every edit
    fig, axes = plt.subplots(len(panels), cols, figsize=(1.1 * cols + 1.2, 1.3 * len(panels) + 0.4), dpi=100,
                             squeeze=False, layout="constrained")
    for r, (label, imgs, p, k) in enumerate(panels):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            show_image(ax, imgs[c])
            if p is not None:
                ax.set_title(f"p({k}) {float(p[c]):.2f}", fontsize=7)
        axes[r, 0].set_ylabel(label, fontsize=8)
    guidance = "" if args.guidance is None else f", CFG {args.guidance:g}"
    shown = "" if cols == x.shape[0] else f" (first {cols} of {x.shape[0]})"
    fig.suptitle(f"{args.source} -> {args.target}: {args.steps} steps from t = {float(ts[0]):.3g}{guidance}{shown}", fontsize=9)
    save_figure(fig, path)

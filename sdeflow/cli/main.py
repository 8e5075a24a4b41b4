"""The ``sdeflow`` command."""

from __future__ import annotations

import argparse
import sys
import warnings

from ..pretrained import PRETRAINED
from ..registry import ALL_SAMPLERS, GRIDS, PROBLEMS, SAMPLERS, SCHEDULES
from .args import positive_int


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line: what is wrong and what is allowed
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sdeflow", description="Diffusion and flow models as ODEs/SDEs: train, sample and solve "
                     "inverse problems; every method measured against an exact Gaussian-mixture oracle.")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"sdeflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def sampling_flags(p, default_sampler, default_schedule, default_grid, default_nfe, tokens=False):
        from ..discrete import TOKEN_SAMPLERS

        extra = (f"; a token model (digits-tokens) takes one of: {', '.join(TOKEN_SAMPLERS)}, default first-hitting "
                 "with one evaluation per token"
                 if tokens else "")
        p.add_argument("--sampler", default=default_sampler, choices=list(ALL_SAMPLERS) + (list(TOKEN_SAMPLERS) if tokens else []),
                       metavar="NAME",
                       help=f"one of: {', '.join(ALL_SAMPLERS)} (flow-map and consistency need a few-step flow-map "
                       "model) (default: "
                       f"{default_sampler or 'the best for the schedule family and --nfe, with its grid; see sdeflow list'})"
                       + extra)
        p.add_argument("--schedule", default=default_schedule, choices=list(SCHEDULES), metavar="NAME",
                       help=f"one of: {', '.join(SCHEDULES)} (default: {default_schedule or 'the model schedule; vp-linear for problems'})")
        p.add_argument("--grid", default=default_grid, metavar="NAME|T0,T1,...",
                       help=f"one of: {', '.join(GRIDS)}, tuned (a model's grid fitted by sdeflow tune for the sampler "
                       "and --nfe), or decreasing times such as 1,0.5,0.2,0 "
                       "(default: " + (default_grid or "the grid of the default sampler; with --sampler: auto for models, "
                                       "logsnr for problems") + ")")
        p.add_argument("--nfe", type=positive_int, default=default_nfe,
                       help="evaluation budget; the largest step count within it is used (default: "
                       f"{default_nfe or '20, or the budget a few-step model was trained for'})")
        p.add_argument("--steps", type=positive_int, default=None, help="number of steps (overrides --nfe)")
        p.add_argument("--partial", action="store_true",
                       help="allow a grid that stops before t = 0 (the samples are then still noisy)")
        p.add_argument("--noise", default="generator", choices=["generator", "seeded", "brownian"],
                       help="noise of stochastic samplers: one seeded generator (fast), per-sample seeds "
                       "(independent of --num), or per-sample Brownian trees (refined, not redrawn, when "
                       "the step count changes) (default: generator)")

    demo = sub.add_parser("demo", help="sample the embedded 2-D Gaussian mixture and report the exact error",
                          description="Sample the embedded 2-D Gaussian mixture with a chosen sampler and NFE, "
                          "print the error against the exact answer and write a PNG of the samples over the "
                          "true density.")
    sampling_flags(demo, "heun", "rectified-flow", "uniform", 19)
    demo.add_argument("-n", "--num", "--num-samples", dest="num", type=positive_int, default=2000,
                      help="number of samples (default: 2000)")
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--out", default="sdeflow-demo.png", help="PNG to write; '' for none (default: sdeflow-demo.png)")

    smp = sub.add_parser("sample", help="sample a trained model (default: the shipped digits model) or an exact problem",
                         description="Sample a checkpoint (default: the shipped class-conditional digits model) or one "
                         "of the exact Gaussian-mixture problems with any sampler, grid and NFE; write a PNG picture "
                         "and/or an .npz of the samples. Under torchrun the samples are sharded over the processes "
                         "and are bit-identical to a single-process run.")
    smp.add_argument("--checkpoint", default=None, metavar="NAME|PATH",
                     help=f"a shipped model ({', '.join(PRETRAINED)}), a "
                     "checkpoint .safetensors or a training run folder (default: shipped:digits)")
    smp.add_argument("--problem", default=None, choices=list(PROBLEMS), metavar="NAME",
                     help=f"sample an exact problem instead of a model: one of {', '.join(PROBLEMS)}")
    sampling_flags(smp, None, None, None, None, tokens=True)
    smp.add_argument("--label", default=None, metavar="all|none|K[,K...]",
                     help="classes of a class-conditional model: all (cycle, default), none, or class numbers")
    smp.add_argument("-n", "--num", "--num-samples", dest="num", type=positive_int, default=None,
                     help="number of samples (default: 100 images, 2000 points, 1000 for a problem); under torchrun write "
                     "-n or --num-samples, since "
                     "torchrun reads --num as a prefix of its own --numa-binding")
    smp.add_argument("--batch-size", type=positive_int, default=256, help="samples per network batch (default: 256)")
    smp.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    smp.add_argument("--out", nargs="+", default=None, metavar="FILE",
                     help="one or more .png (picture) / .npz (arrays) files (default: samples.png for a model, "
                     "samples.npz for a problem; '' for none)")
    smp.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    smp.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    smp.add_argument("--teleport", default=None, metavar="auto|T",
                     help="skip the first steps exactly under the data's Gaussian: start the grid at time T, or at the "
                     "time where the Gaussian explains 99%% of the model's field (auto; up to 24 evaluations of 200 "
                     "draws); the grid's steps are spent below it (default: no skip)")
    smp.add_argument("--tuned", default=None, metavar="FILE",
                     help="the tuned-grid file of --grid tuned, written for this model by sdeflow tune --out FILE "
                     "(implies --grid tuned; default: the grids beside the checkpoint)")
    smp.add_argument("--teleport-data", default=None, metavar="FILE",
                     help="the training data (.npy/.npz, raw units) to fit the model's Gaussian from, for checkpoints "
                     "of data not bundled with sdeflow; it is stored beside the checkpoint")
    from ..guidance import METHODS

    g = smp.add_argument_group("guidance (class-conditional models and labelled problems)")
    g.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="guidance scale (1: the conditional model; cfg++ takes W in [0, 1]) (default: no guidance)")
    g.add_argument("--guidance-method", default="cfg", choices=list(METHODS), metavar="NAME",
                   help=f"one of: {', '.join(METHODS)} (default: cfg; see sdeflow list)")
    g.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                   help="guide only at noise levels sigma/alpha in (LO, HI], e.g. 0.3,5 (inf allowed); the "
                   "unconditional pass is skipped outside (default: every noise level)")
    g.add_argument("--guidance-logsnr", action="store_true",
                   help="read --guidance-interval as bounds on log(alpha/sigma) (sdeflow's logsnr) instead of sigma/alpha")
    g.add_argument("--guidance-option", action="append", default=None, metavar="KEY=VALUE",
                   help="a setting of the method (repeatable), e.g. phi=0.7, eta=0, momentum=-0.5, "
                   "norm_threshold=4, zero_sigma=20")
    g.add_argument("--guide", default=None, metavar="NAME|PATH",
                   help="the weaker model of autoguidance (default for digits: digits-small)")
    g.add_argument("--classifier", default=None, metavar="NAME|PATH",
                   help="the noise-aware classifier of classifier guidance (default for digits: digits-noisy-classifier)")
    g.add_argument("--guidance-separate", action="store_true",
                   help="run the conditional and unconditional passes as two forwards (less memory) instead of one batched")

    from .train_cmd import add_train_parser

    add_train_parser(sub)
    from .restore_cmd import add_restore_parser

    add_restore_parser(sub)
    from .diagnose_cmd import add_diagnose_parser
    from .likelihood_cmd import add_likelihood_parser

    add_likelihood_parser(sub)
    add_diagnose_parser(sub)
    from .edit_cmd import add_edit_parser

    add_edit_parser(sub)
    from .tune_cmd import add_tune_parser

    add_tune_parser(sub)
    exp = sub.add_parser("export", help="write a run's EMA weights as a small sampling-only checkpoint",
                         description="Write the EMA weights and the metadata of a training run (no optimiser state) "
                         "to a new .safetensors file, optionally in float16; sdeflow sample --checkpoint reads it.")
    exp.add_argument("run", help="a training run folder or its checkpoint.safetensors")
    exp.add_argument("out", help="the .safetensors file to write")
    exp.add_argument("--half", action="store_true", help="store the weights in float16 (half the size)")

    sub.add_parser("list", help="list the registered schedules, samplers, grids, inverse methods and operators",
                   description="List the names the other commands accept.")
    return parser


def _table(title: str, table) -> None:
    """One table of names with their one-line summaries."""
    print(title)
    width = max(map(len, table))
    for name in table:
        print(f"  {name:<{width}}  {table.summary(name)}")


def _list() -> None:
    from ..bridges import BRIDGE_SAMPLERS, PROCESSES
    from ..guidance import METHODS as GUIDANCE_METHODS
    from ..inverse import METHODS as INVERSE_METHODS, OPERATORS
    from ..pretrained import PRETRAINED
    from ..samplers import DEFAULTS, FLOW_MAP_SAMPLERS
    from ..training.config import OBJECTIVES, RECIPES

    _table("schedules (--schedule NAME):", SCHEDULES)
    print("samplers (--sampler NAME): what each is; order of accuracy, evaluations per step")
    width = max(map(len, SAMPLERS))
    for name, make in SAMPLERS.items():
        s = make()
        cost = "error-controlled steps" if s.adaptive else f"{s.nfe_per_step} NFE/step"
        if getattr(s, "intervals", None):
            cost += " + restart passes"
        kind = "stochastic" if s.stochastic else "deterministic"
        order = "no fixed order" if s.convergence_order == 0 else f"order {s.convergence_order}"
        print(f"  {name:<{width}}  {SAMPLERS.summary(name)}; {order}, {cost}, {kind}")
    _table("few-step samplers of flow-map models:", FLOW_MAP_SAMPLERS)
    _table("grids (--grid NAME; also tuned: a model's grids fitted by sdeflow tune; or decreasing times: 1,0.5,0):", GRIDS)
    print("defaults of sdeflow sample (by schedule family and NFE; a model with a configuration chosen for it at the "
          "budget, by sdeflow tune --method choose or shipped with it, runs that instead):")
    for fam, rows in DEFAULTS.items():
        lo, parts = 1, []
        for most, sampler, grid in rows:
            parts.append(f"NFE {lo}-{most if most != float('inf') else ''}: {sampler} on {grid}".replace("-: ", "+: "))
            lo = most + 1 if most != float("inf") else lo
        print(f"  {fam:<6} {'; '.join(parts)}")
    _table("exact problems (sdeflow sample --problem NAME):", PROBLEMS)
    _table("inverse-problem methods (sdeflow restore --method NAME; sdeflow.inverse.solve), and when each is exact:",
           INVERSE_METHODS)
    _table("measurement operators (sdeflow restore --operator NAME):", OPERATORS)
    _table("guidance methods (sdeflow sample --guidance W --guidance-method NAME; sdeflow.guidance.guided):",
           GUIDANCE_METHODS)
    print("  (predictor-corrector guidance: any method with --sampler pc-langevin, whose corrector targets the "
          "tilted p_t(x|c)^w p_t(x)^(1-w))")
    _table("processes pinned at a source (sdeflow train --process NAME; sdeflow.bridges):", PROCESSES)
    _table("bridge samplers (sdeflow restore --checkpoint BRIDGE --sampler NAME; any sampler above works too):",
           BRIDGE_SAMPLERS)
    from ..discrete import TOKEN_LOSSES, TOKEN_PROCESSES, TOKEN_SAMPLERS

    _table("token processes (sdeflow train --tokens NAME; sdeflow.discrete):", TOKEN_PROCESSES)
    _table("token losses (sdeflow train --tokens NAME --token-loss NAME):", TOKEN_LOSSES)
    _table("token samplers (sdeflow sample --checkpoint digits-tokens --sampler NAME; sdeflow.discrete.sample_tokens):",
           TOKEN_SAMPLERS)
    print("shipped models (sdeflow sample --checkpoint NAME, or shipped:NAME where a local folder has the name): "
          + ", ".join(n for n in PRETRAINED if n != "digits-bridge")
          + "; the restoration bridge digits-bridge (sdeflow restore --checkpoint digits-bridge)")
    print("training objectives (sdeflow train --objective NAME): " + ", ".join(OBJECTIVES))
    print("training recipes (sdeflow train --recipe NAME):")
    for name, fields in RECIPES.items():
        print(f"  {name:<5} " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in fields.items()))


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure a user's input can cause (a bad value, a file that cannot be
    read or written, a missing device) ends as one line on stderr naming what is wrong and what is
    allowed, exit code 1 (usage errors: 2); a traceback means a bug in sdeflow."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.filterwarnings("default", category=UserWarning)  # a command's notices are part of what it reports
        warnings.showwarning = _warn  # one line, what the user needs to know: not the source line that warned
        return _run(args)


def _warn(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"sdeflow: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _run(args) -> int:
    try:
        if args.command == "list":
            _list()
        elif args.command == "sample":
            from .sample_cmd import run_sample

            run_sample(args)
        elif args.command == "export":
            import torch

            from ..files import check_output
            from ..pretrained import path_of
            from ..checkpoint import export_weights, refuse_overwrite

            source = path_of(args.run)
            check_output(args.out, (".safetensors",), what="export OUT", inputs=[source])
            refuse_overwrite(args.out, "export OUT")
            export_weights(source, args.out, torch.float16 if args.half else None)
            print(f"wrote {args.out}")
        elif args.command == "likelihood":
            from .likelihood_cmd import run_likelihood

            run_likelihood(args)
        elif args.command == "diagnose":
            from .diagnose_cmd import run_diagnose

            run_diagnose(args)
        elif args.command == "tune":
            from .tune_cmd import run_tune

            run_tune(args)
        elif args.command == "edit":
            from .edit_cmd import run_edit

            run_edit(args)
        elif args.command == "restore":
            from .restore_cmd import run_restore

            run_restore(args)
        elif args.command == "train":
            from .train_cmd import run_train

            run_train(args)
        elif args.command == "demo":
            from .demo import run_demo

            run_demo(args)
    except (ValueError, FloatingPointError) as err:
        return _fail(str(err))
    except OSError as err:  # a file or folder that cannot be read or written
        where = f"{err.filename}: " if err.filename else ""
        return _fail(f"{where}{err.strerror or err}")
    except KeyboardInterrupt:
        return _fail("interrupted")
    return 0


def _fail(message: str) -> int:
    print(f"sdeflow: error: {' '.join(message.split())}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

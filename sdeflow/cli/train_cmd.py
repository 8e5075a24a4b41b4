"""``sdeflow train``: every :class:`~sdeflow.training.config.TrainConfig` field as a flag, an
optional TOML/YAML config file (flags override it), ``--resume`` to continue a run."""

from __future__ import annotations

import argparse
import dataclasses
import json

from ..training.config import OBJECTIVES, RECIPES, TrainConfig, read_config_file
from ..objectives.densities import DENSITIES
from ..objectives.losses import WEIGHTINGS

HELP = {
    "data": "digits, moons, swiss-roll, eight-gaussians, checkerboard, a folder of PNG/JPEG images or a .npy/.npz file",
    "out": "run folder: checkpoint.safetensors, config.json, samples/",
    "recipe": f"one of {', '.join(RECIPES)}: fills schedule, parameterization, time input, time density and weighting",
    "schedule": "forward process (overrides the recipe); see sdeflow list",
    "parameterization": "what the network predicts: x0, eps, v, score, velocity, edm",
    "time_input": "time input of the network: t, t1000, index, edm, logsnr, sigma",
    "time_density": f"one of {', '.join(DENSITIES)}",
    "weighting": f"one of {', '.join(WEIGHTINGS)}",
    "ot_coupling": "pair data and noise by exact minibatch optimal transport (global batch under torchrun)",
    "fokker_planck": "weight of the score Fokker-Planck penalty that pulls the model's ODE and SDE to the same "
                     "marginals (0: none; about 4 forward and 3 backward passes more per step)",
    "image_size": "side of images read from a folder (centre crop, then resize)",
    "standardize": "scale .npy/.npz data to mean 0, standard deviation 1",
    "architecture": "unet or mlp (default: unet for images, mlp otherwise)",
    "model": "network settings as KEY=VALUE (repeatable), e.g. --model base=64 --model mults=[1,2,2]",
    "conditional": "condition on the data's class labels when it has them (with label dropout)",
    "precision": "fp32, bf16 (autocast) or fp16 (autocast + loss scaling, GPU)",
    "device": "auto, cpu, cuda",
    "sample_sampler": "sampler of the periodic sample pictures",
    "sample_every": "steps between sample pictures in OUT/samples (0: none)",
    "checkpoint_every": "steps between checkpoints",
    "skip_nonfinite": "steps with a NaN or infinite loss or gradient to skip before training stops (mixed precision); "
                      "0 stops at the first, keeping the last checkpoint",
    "objective": f"what the run trains, one of: {', '.join(OBJECTIVES)} (few-step objectives: see docs/fewstep.md)",
    "teacher": "a trained model (shipped name, run folder or .safetensors) that reflow, progressive and the distilled "
               "few-step objectives learn from",
    "teacher_sampler": "deterministic sampler of the teacher's solves",
    "teacher_nfe": "evaluations of each teacher solve",
    "pairs": "noise-data pairs the teacher solves for reflow",
    "distill_steps": "sampling steps a progressive-distillation student is trained for",
    "jump_fraction": "share of each shortcut or meanflow batch trained on jumps (the rest: flow matching)",
    "steps": "optimiser steps",
    "batch_size": "samples per step (global under torchrun)",
    "lr": "learning rate (AdamW, after a linear warm-up)",
    "warmup": "steps of the linear learning-rate warm-up",
    "seed": "seed of everything random in the run",
    "process": "train a bridge pinned at a degraded source instead (see docs/bridges.md): ddbm-vp, ddbm-ve, i2sb, "
               "brownian, ou-bridge, ir-sde, rddm; the parameterization is then x0, eps, residual, ddbm (default) or i2sb",
    "degrade": "a bridge run's source: the operator (sdeflow restore --operator) each clean sample is measured with",
    "degrade_noise": "a bridge run's measurement noise (data units) before the back-projection",
}


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a diffusion or flow model on a dataset, a folder of images or an array file",
                       description="Train a diffusion / flow-matching model. Settings come from the defaults, then "
                       "--config FILE (TOML or YAML), then the flags. Run under torchrun for several processes.")
    p.add_argument("--config", default=None, help="TOML or YAML file of settings (names as the flags, _ or -)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        helptext = HELP.get(f.name, "") + (f" (default: {default})" if default not in (None, {}) else "")
        if f.name == "model":
            p.add_argument(flag, action="append", default=None, metavar="KEY=VALUE", help=helptext)
        elif isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        else:
            kind = type(default) if default is not None else str
            p.add_argument(flag, type=kind, default=None, help=helptext)


def _model_settings(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--model takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def config_from_args(args) -> TrainConfig:
    settings = read_config_file(args.config) if args.config else {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name)
        if value is not None:
            settings[f.name] = _model_settings(value) if f.name == "model" else value
    return TrainConfig.from_dict(settings, where=args.config or "flags").resolved()


def run_train(args) -> dict:
    from ..training.trainer import Trainer

    trainer = Trainer(config_from_args(args), resume=args.resume, progress=not args.no_progress)
    if trainer.dist.main:
        params = sum(p.numel() for p in trainer.net.parameters())
        print(f"training {trainer.architecture} ({params / 1e6:.2f}M parameters) on {trainer.data_info['name']} "
              f"({trainer.data_info['size']} samples of shape {tuple(trainer.data_info['shape'])}), "
              f"{trainer.cfg.process or trainer.cfg.schedule} / {trainer.cfg.parameterization}, "
              f"from step {trainer.step} to {trainer.cfg.steps}"
              + (f" on {trainer.dist.world} processes" if trainer.dist.world > 1 else ""))
    report = trainer.fit()
    if trainer.dist.main:
        state = "stopped by a signal" if report["interrupted"] else "done"
        print(f"{state} at step {report['steps']}: loss {report['loss']:.4f}, {report['samples_per_s']:.0f} samples/s, "
              f"{report['seconds']:.0f} s; checkpoint {trainer.path}")
    return report

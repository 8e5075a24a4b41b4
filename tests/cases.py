"""How the default test run covers the registry without its cross products (the standard's budget):
every sampler on one representative case, every case with one sampler of each kind; the rest of a
cross product is marked slow, and CI runs it after the default run."""

from __future__ import annotations

import pytest

from sdeflow.registry import SAMPLERS


def kind(name: str) -> str:
    """The engine a sampler is built on (or what it is otherwise), and whether it is stochastic."""
    from sdeflow.samplers import Multistep, SingleStep
    from sdeflow.samplers.reversible import TwoStep
    from sdeflow.samplers.sde import AffineStep

    s = SAMPLERS[name]()
    engine = next((e.__name__ for e in (AffineStep, Multistep, SingleStep, TwoStep) if isinstance(s, e)),
                  "adaptive" if s.adaptive else "reversible" if s.reversible else "composite")
    return f"{engine}{'-stochastic' if s.stochastic else ''}"


#: One sampler of each kind (the first by name): what every case is checked with in the default run.
REPRESENTATIVES = sorted({kind(n): n for n in reversed(sorted(SAMPLERS))}.values())


def cross(names, others, default_other, representatives=True, among=REPRESENTATIVES):
    """``(name, other)`` pairs: every name with ``default_other`` and (``representatives``) every other with
    the names in ``among`` in the default run; the rest marked slow."""
    out = []
    for n in names:
        for o in others:
            fast = o == default_other or (representatives and n in among)
            out.append((n, o) if fast else pytest.param(n, o, marks=pytest.mark.slow))
    return out


def resumes_exactly(tmp_path, cfg) -> dict:
    """A run of 4 steps and one stopped at 2 and resumed to 4 (``cfg(out, steps)`` makes each configuration)
    end with the same weights, EMA and optimiser state; returns the reference run's checkpoint metadata."""
    import torch

    from sdeflow import checkpoint as ckpt
    from sdeflow.training.trainer import Trainer

    Trainer(cfg("ref", 4), progress=False).fit()
    Trainer(cfg("cut", 2), progress=False).fit()
    Trainer(cfg("cut", 4), resume=True, progress=False).fit()
    ref, meta = ckpt.load(str(tmp_path / "ref" / "checkpoint.safetensors"))
    cut, _ = ckpt.load(str(tmp_path / "cut" / "checkpoint.safetensors"))
    for k in ref:
        torch.testing.assert_close(ref[k], cut[k], rtol=1e-6, atol=1e-7)
    return meta

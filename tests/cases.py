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

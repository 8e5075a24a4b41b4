"""Gradients through sampling in memory that does not grow with the number of steps.

``sample(..., gradient="checkpoint")`` runs the loop without recording it and returns a result
whose backward pass recomputes the steps it needs: to differentiate steps ``[a, b)`` from the
snapshot ``(x_a, state_a)``, it samples to the midpoint ``m`` without recording, differentiates
``[m, b)`` from that snapshot, drops it, and then differentiates ``[a, m)``. At most ``log2(n) + 1``
snapshots (a state and the sampler's history) are alive at once and only one step is recorded at
a time, for about ``log2(n) / 2`` extra sampling passes. The gradient is that of the discrete steps
actually taken, equal to plain autograd through them (to round-off), with respect to the initial
state, every tensor in ``cond`` that requires grad and the denoiser's parameters.

``gradient="reversible"`` does the same for reversible samplers (:mod:`sdeflow.samplers.reversible`)
without recomputing forwards: the backward pass undoes the steps one at a time from the final
state, differentiating each step from the input it reconstructs. One snapshot is alive at a time
(plus the input of any step that cannot be undone, kept in the forward pass: a final step to
``t = 0``), and the cost is one undo and one recorded step per step. The reconstructed inputs equal
the forward pass's to round-off, so the gradient equals plain autograd's to round-off.

Stochastic samplers are differentiated for a fixed noise path, so their noise must be drawn again
identically when a step is recomputed (:class:`~sdeflow.noise.SeededNoise` or
:class:`~sdeflow.noise.BrownianTreeNoise`).
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from .run import Steps


class _Recomputed:
    """Differentiates steps ``[a, b)`` of a run by recomputing them (see the module docstring)."""

    def __init__(self, steps: Steps, params: list, callback=None):
        self.steps, self.params, self.callback = steps, params, callback
        self.run = steps.run_steps

    def backward(self, snap, a: int, b: int, cot, params, grads):
        """Cotangents of the snapshot at ``a`` given those (``cot``, flattened) of the one at ``b``;
        accumulates the parameters' gradients into ``grads``."""
        if b - a > 1:
            m = (a + b) // 2
            with torch.no_grad():
                mid = self.run(snap, a, m)
            cot = self.backward(mid, m, b, cot, params, grads)
            del mid
            return self.backward(snap, a, m, cot, params, grads)
        leaves, spec = tree_flatten(snap)
        inputs = [t.detach().requires_grad_(t.is_floating_point()) if isinstance(t, torch.Tensor) else t for t in leaves]
        with torch.enable_grad():
            outs, _ = tree_flatten(self.run(tree_unflatten(inputs, spec), a, b))
        pairs = [(o, c) for o, c in zip(outs, cot) if c is not None and isinstance(o, torch.Tensor) and o.requires_grad]
        wrt = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
        if not pairs:
            return [None] * len(inputs)
        got = torch.autograd.grad([o for o, _ in pairs], wrt + params, [c for _, c in pairs], allow_unused=True)
        for k, g in enumerate(got[len(wrt):]):
            if g is not None:
                grads[k] = g if grads[k] is None else grads[k] + g
        it = iter(got[: len(wrt)])
        return [next(it) if isinstance(t, torch.Tensor) and t.requires_grad else None for t in inputs]


class _Checkpointed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rec, reverse, x_init, *params):
        snap = rec.steps.start(x_init.detach())
        # leaves of the start snapshot that are x_init itself (a sampler state starting as a copy of
        # x, e.g. EDICT's second sequence): their cotangents add up to x_init's
        ctx.alias = [k for k, t in enumerate(tree_flatten(snap)[0]) if t is snap[0]]
        n = len(rec.steps.plan.t)
        if reverse:  # keep the final snapshot and the inputs of the steps that cannot be undone
            ctx.kept = {}
            for i, ok in enumerate(rec.steps.sampler.undoable(rec.steps.plan)):
                if not ok:
                    ctx.kept[i] = snap
                snap = rec.run(snap, i, i + 1, rec.callback)
            x, state = ctx.snap = snap
        else:
            ctx.snap = snap
            x, state = rec.run(snap, 0, n, rec.callback)
        ctx.rec, ctx.reverse, ctx.leaves = rec, reverse, len(tree_flatten((x, state))[0])
        return x

    @staticmethod
    def backward(ctx, g):
        rec = ctx.rec
        grads = [None] * len(rec.params)
        n = len(rec.steps.plan.t)
        # the final snapshot's leaves are x (first) and the sampler's state, which nothing downstream uses
        cot = [g] + [None] * (ctx.leaves - 1)
        if not ctx.reverse:
            cot = rec.backward(ctx.snap, 0, n, cot, rec.params, grads)
        else:
            snap = ctx.snap
            for i in reversed(range(n)):
                if i in ctx.kept:
                    snap = ctx.kept.pop(i)
                else:
                    with torch.no_grad():
                        snap = rec.steps.unrun(snap, i + 1, i)
                cot = rec.backward(snap, i, i + 1, cot, rec.params, grads)
        parts = [cot[k] for k in ctx.alias if cot[k] is not None]
        return (None, None, sum(parts[1:], parts[0]) if parts else None, *grads)


def sample_checkpointed(steps: Steps, x_init: torch.Tensor, params: list, callback=None,
                        reverse: bool = False) -> torch.Tensor:
    """The final state of the run, differentiable through :class:`_Checkpointed` (see the module
    docstring); ``params``: the tensors other than ``x_init`` to differentiate with respect to;
    ``callback(i, x)`` is called after each step of the first pass; ``reverse``: undo the steps of a
    reversible sampler instead of recomputing them."""
    return _Checkpointed.apply(_Recomputed(steps, params, callback), reverse, x_init, *params)

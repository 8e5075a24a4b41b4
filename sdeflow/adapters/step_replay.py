"""One sampler step replayed from the network outputs given so far: what lets
:class:`~sdeflow.adapters.scheduler.SdeflowScheduler` take diffusers' one-evaluation-per-call ``step`` with
no loop running behind it. A step is recomputed from its start state with the outputs it has been handed;
the first evaluation it has not been given raises :class:`Pending` with the state and time at which it is
wanted. Noise drawn inside a step is kept for the step, so its recomputations see the same draws."""

from __future__ import annotations


class Pending(Exception):
    """A step asked for an evaluation it has not been given: ``(x, t)``."""

    def __init__(self, x, t):
        super().__init__()
        self.x, self.t = x, t


class Given:
    """The network of the replayed step: returns the output it was handed (or its negative, for EDM's
    ``v_prediction``, whose output factor is ``-c_out``)."""

    def __init__(self, sign: float):
        self.output, self.sign = None, sign

    def __call__(self, x, c, **cond):
        return self.output if self.sign == 1.0 else -self.output


class Replay:
    """The field of one sampler step: its ``k``-th evaluation returns the ``k``-th output given, as ``x_hat``
    at the state the step computes; the first evaluation not given yet raises :class:`Pending`."""

    def __init__(self, denoiser, given: Given, outputs: list):
        self.denoiser, self.given, self.outputs, self.calls, self.last = denoiser, given, outputs, 0, None

    def _next(self, x, t):
        if self.calls == len(self.outputs):
            raise Pending(x, float(t))
        self.given.output = self.outputs[self.calls].to(x.dtype)
        self.calls += 1

    def __call__(self, x, t):
        self._next(x, t)
        self.last = self.denoiser(x, float(t))
        return self.last

    def ode_velocity(self, x, t):
        self._next(x, t)
        return self.denoiser.ode_velocity(x, float(t))


class KeptNoise:
    """``noise(draw, span)`` inside a step: drawn once per step from the generator and kept, so the
    step's recomputations see the same noise."""

    def __init__(self):
        self.kept: dict = {}
        self.x, self.source = None, None

    def __call__(self, draw: int = 0, span=None):
        key = (draw, span)
        if key not in self.kept:
            self.kept[key] = self.source(self.x, 0, draw, span)
        return self.kept[key]


class StepRun:
    """Where the loop stands: the plan, step ``i``, its start state and sampler state, the outputs given
    in this step, and the pending evaluation."""

    def __init__(self, plan, x, sampler):
        self.plan, self.i, self.x, self.state = plan, 0, x, sampler.init_state(x, plan)
        self.outputs: list = []
        self.noise = KeptNoise()
        self.pending_at_start, self.pending_t, self.done = True, None, False
        self.first = self.given = 0  # the evaluation the run began at; outputs given since

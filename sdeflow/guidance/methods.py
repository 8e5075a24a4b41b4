"""Guidance methods by name: what ``sdeflow sample --guidance-method`` and the benchmark build."""

from __future__ import annotations

from typing import Callable

from ..denoisers import Denoiser
from ..names import NameTable
from ..samplers.base import Sampler
from .cfgpp import CFGPlusPlus
from .classifier import ClassifierGuided
from .guided import Guided, Interval, parse_interval
from .rules import APG, CFG, CFGRescale, CFGZeroStar

def _rule(kind):
    """A method that guides by a rule of :mod:`.rules` on the denoiser's two predictions."""
    def build(denoiser, scale, *, interval=None, guide=None, classifier=None, null=None, batched=True, **options):
        try:
            rule = kind(scale, **options)
        except TypeError:
            raise ValueError(f"unknown option(s) {', '.join(options)} for {kind.__name__}; see sdeflow list") from None
        return Guided(denoiser, rule, guide=guide, interval=interval, null=null, batched=batched)
    return build


def _classifier(denoiser, scale, *, interval=None, guide=None, classifier=None, null=None, batched=True, **options):
    if classifier is None:
        raise ValueError("classifier guidance needs a classifier: (x_t, t, label) -> log p_t(c | x_t)")
    if interval is not None or options:
        raise ValueError("classifier guidance takes no interval or rule options")
    return ClassifierGuided(denoiser, classifier, scale)


#: Every method by name (a :class:`~sdeflow.names.NameTable`): a builder ``(denoiser, scale, *, interval,
#: guide, classifier, null, batched, **options) -> guided denoiser`` and a one-line description
#: (``sdeflow list`` prints them).
METHODS = NameTable("guidance method", {
    "cfg": (_rule(CFG), "classifier-free guidance: x_u + w (x_c - x_u), one batched forward"),
    "rescale": (_rule(CFGRescale), "CFG rescaled to the conditional prediction's std, blended with phi (option phi=0.7)"),
    "apg": (_rule(APG), "adaptive projected guidance: orthogonal part of x_c - x_u, momentum, norm cap "
            "(options eta=0, momentum=-0.5, norm_threshold)"),
    "cfg++": (_rule(CFG), "CFG++: guided clean estimate, re-noised with the unconditional noise (w in [0, 1]); any "
              "fixed-grid sampler"),
    "cfg-zero": (_rule(CFGZeroStar), "CFG-Zero*: per-sample optimal scale of the unconditional velocity, zero velocity "
                 "above a noise level (option zero_sigma)"),
    "auto": (_rule(CFG), "autoguidance: a weaker model of the same task as the negative (digits: the shipped digits-small)"),
    "classifier": (_classifier, "classifier guidance: w sigma^2/alpha grad log p_t(c | x_t) of a noise-aware classifier "
                   "(digits: the shipped digits-noisy-classifier)"),
})


def guided(denoiser: Denoiser, method: str = "cfg", scale: float = 3.0, *, interval: Interval | tuple | str | None = None,
           guide: Denoiser | None = None, classifier: Callable | None = None, null=None, batched: bool = True,
           **options) -> Denoiser:
    """The guided denoiser of ``method`` (see :data:`METHODS`) at ``scale``. ``interval``: noise
    levels ``(lo, hi]`` in sigma (or an :class:`Interval`); ``options``: the rule's own settings."""
    build = METHODS.lookup(method)
    interval = parse_interval(interval) if interval is not None else None
    if method == "auto" and guide is None:
        raise ValueError("autoguidance needs guide= (a weaker model of the same task)")
    if method != "auto" and guide is not None:
        raise ValueError(f"guide= is for autoguidance (method 'auto'), not {method!r}")
    return build(denoiser, scale, interval=interval, guide=guide, classifier=classifier, null=null, batched=batched,
                 **options)


def guided_sampler(method: str, sampler: Sampler) -> Sampler:
    """The sampler a method needs: CFG++ wraps it, the others leave it as it is."""
    return CFGPlusPlus(sampler) if method == "cfg++" else sampler

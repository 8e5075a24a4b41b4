"""Guidance methods by name: what ``sdeflow sample --guidance-method`` and the benchmark build."""

from __future__ import annotations

from typing import Callable, NamedTuple

from ..denoisers import Denoiser
from ..names import NameTable
from ..samplers.base import Sampler
from .cfgpp import CFGPlusPlus
from .classifier import ClassifierGuided
from .guided import Guided, Interval, parse_interval
from .rules import APG, CFG, CFGRescale, CFGZeroStar
from .tfg import TFG

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


class Needs(NamedTuple):
    """What a method needs besides the denoiser: ``model`` another model (``"guide"``: a weaker model of the
    same task; ``"classifier"``: a noise-aware classifier ``(x_t, t, label) -> log p_t(c | x_t)``),
    ``sampler`` a change of the sampler (CFG++ wraps it), ``max_scale`` the largest scale it takes."""

    model: str | None = None
    sampler: Callable[[Sampler], Sampler] | None = None
    max_scale: float = float("inf")


def _tfg(denoiser, scale, *, interval=None, guide=None, classifier=None, null=None, batched=True, **options):
    if classifier is None:
        raise ValueError("TFG needs a predictor of clean data: a classifier (x, t, label) -> log p(c | x), read at the "
                         "schedule's smallest time")
    if interval is not None:
        raise ValueError("TFG takes no interval (its strength follows sigma_t through the guidance terms)")
    t0 = denoiser.schedule.t_min

    def predictor(x0, label=None, **cond):
        return classifier(x0, t0, label)
    try:
        return TFG(denoiser, predictor, rho=scale, **{k: (int(v) if k in ("iterations", "probes") else v)
                                                      for k, v in options.items()})
    except TypeError:
        raise ValueError(f"unknown option(s) {', '.join(options)} for TFG; allowed: mu, gamma, iterations, probes") from None


#: Every method by name (a :class:`~sdeflow.names.NameTable`): a builder ``(denoiser, scale, *, interval,
#: guide, classifier, null, batched, **options) -> guided denoiser``, a one-line description (``sdeflow list``
#: prints them) and what it :class:`Needs` (the command line loads and checks it from there).
METHODS = NameTable("guidance method", {
    "cfg": (_rule(CFG), "classifier-free guidance: x_u + w (x_c - x_u), one batched forward", Needs()),
    "rescale": (_rule(CFGRescale), "CFG rescaled to the conditional prediction's std, blended with phi (option phi=0.7)",
                Needs()),
    "apg": (_rule(APG), "adaptive projected guidance: orthogonal part of x_c - x_u, momentum, norm cap "
            "(options eta=0, momentum=-0.5, norm_threshold)", Needs()),
    "cfg++": (_rule(CFG), "CFG++: guided clean estimate, re-noised with the unconditional noise (w in [0, 1]); any "
              "fixed-grid sampler", Needs(sampler=CFGPlusPlus, max_scale=1.0)),
    "cfg-zero": (_rule(CFGZeroStar), "CFG-Zero*: per-sample optimal scale of the unconditional velocity, zero velocity "
                 "above a noise level (option zero_sigma)", Needs()),
    "auto": (_rule(CFG), "autoguidance: a weaker model of the same task as the negative (digits: the shipped digits-small)",
             Needs(model="guide")),
    "classifier": (_classifier, "classifier guidance: w sigma^2/alpha grad log p_t(c | x_t) of a noise-aware classifier "
                   "(digits: the shipped digits-noisy-classifier)", Needs(model="classifier")),
    "tfg": (_tfg, "training-free guidance by a clean-data predictor: rho = w through the denoiser, mean steps "
            "(options mu, iterations), smoothing (gamma, probes)", Needs(model="classifier")),
})


def guided(denoiser: Denoiser, method: str = "cfg", scale: float = 3.0, *, interval: Interval | tuple | str | None = None,
           guide: Denoiser | None = None, classifier: Callable | None = None, null=None, batched: bool = True,
           **options) -> Denoiser:
    """The guided denoiser of ``method`` (see :data:`METHODS`) at ``scale``. ``interval``: noise
    levels ``(lo, hi]`` in sigma (or an :class:`Interval`); ``options``: the rule's own settings."""
    build, needs = METHODS.lookup(method), METHODS.info(method)
    interval = parse_interval(interval) if interval is not None else None
    if needs.model == "guide" and guide is None:
        raise ValueError(f"{method} needs guide= (a weaker model of the same task)")
    if needs.model != "guide" and guide is not None:
        raise ValueError(f"guide= is for autoguidance (method 'auto'), not {method!r}")
    if scale > needs.max_scale:
        raise ValueError(f"{method} takes a guidance scale of at most {needs.max_scale:g}, got {scale}")
    return build(denoiser, scale, interval=interval, guide=guide, classifier=classifier, null=null, batched=batched,
                 **options)


def guided_sampler(method: str, sampler: Sampler) -> Sampler:
    """The sampler a method needs (:attr:`Needs.sampler`: CFG++ wraps it); the others leave it as it is."""
    wrap = METHODS.info(method).sampler
    return wrap(sampler) if wrap is not None else sampler

"""Guidance: classifier-free guidance and its refinements as denoiser transforms.

Every method here is a :class:`~sdeflow.denoisers.Denoiser` wrapping denoisers (or, for CFG++, a
sampler wrapping a sampler), so it works with every sampler, schedule and parameterization:

- :class:`Guided` with a rule: :class:`CFG`, :class:`CFGRescale`, :class:`APG`, :class:`CFGZeroStar`;
  ``guide=`` a weaker model for autoguidance; ``interval=`` an :class:`Interval` of noise levels;
- :class:`ClassifierGuided`: the gradient of a noise-aware classifier's ``log p_t(c | x_t)``;
- :class:`TFG`: training-free guidance by a predictor of clean data;
- :class:`CFGPlusPlus`: CFG++, re-noising each step with the unconditional noise estimate;
- predictor-corrector guidance: a guided denoiser sampled by
  :class:`~sdeflow.samplers.PredictorCorrector`, whose Langevin corrector then targets the tilted
  ``p_t(x | c)^w p_t(x)^(1 - w)`` (see ``docs/guidance.md``).

:func:`guided` builds any of them by method name (what the CLI calls); :data:`METHODS` lists them.
"""

from .classifier import ClassifierGuided, ModelClassifier
from .cfgpp import CFGPlusPlus
from .guided import Guided, Interval, parse_interval
from .rules import APG, CFG, CFGRescale, CFGZeroStar, Rule
from .tfg import TFG
from .methods import METHODS, guided, guided_sampler

__all__ = ["APG", "CFG", "CFGPlusPlus", "CFGRescale", "CFGZeroStar", "ClassifierGuided", "Guided", "Interval",
           "METHODS", "ModelClassifier", "Rule", "TFG", "guided", "guided_sampler", "parse_interval"]

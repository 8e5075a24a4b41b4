"""Likelihoods: the probability-flow log-likelihood (:mod:`.ode`), also along generation, and the
discrete-time variational bound (:mod:`.vlb`)."""

from .ode import (LAM_NOISE, METHODS, PROBES, TRACES, Likelihood, default_t_min, heat_correction, log_likelihood,
                  logsnr_grid, sample_with_log_prob)
from .vlb import VariationalBound, discrete_vlb

__all__ = ["LAM_NOISE", "METHODS", "PROBES", "TRACES", "Likelihood", "default_t_min", "heat_correction", "log_likelihood",
           "logsnr_grid",
           "sample_with_log_prob", "VariationalBound", "discrete_vlb"]

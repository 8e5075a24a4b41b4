"""The exact oracle: Gaussian and Gaussian-mixture data whose denoiser, score, noised density,
posterior under linear-Gaussian measurements, (for one Gaussian) probability-flow map and (for
labelled mixtures) class-conditional fields and noise-aware classifier are closed form. Tests, benchmarks and the
demo measure every method against it."""

from .covariance import Covariance, Diagonal, Full, LowRankPlusDiagonal
from .denoiser import OracleDenoiser, OracleFlowMap
from .examples import PROBLEMS, gaussian, linear_gaussian_problem, random_mixture, ring_2d, two_classes_1d
from .mixture import GaussianMixture
from .sampler_law import gaussian_output_law, gaussian_w2

__all__ = ["GaussianMixture", "OracleDenoiser", "OracleFlowMap", "Covariance", "Diagonal", "Full", "LowRankPlusDiagonal",
           "PROBLEMS", "gaussian", "linear_gaussian_problem", "random_mixture", "ring_2d", "two_classes_1d",
           "gaussian_output_law", "gaussian_w2"]

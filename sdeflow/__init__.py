"""sdeflow: diffusion and flow-matching models as the ODEs and SDEs they are.

A schedule fixes the forward process ``x_t = alpha(t) x + sigma(t) eps`` (``t = 0`` data, ``t = 1``
noise); a denoiser answers ``x_hat = E[x | x_t]``; a sampler steps along a grid of times; one loop,
:func:`sample`, drives it. :mod:`sdeflow.analytic` is the exact Gaussian-mixture oracle; :mod:`sdeflow.guidance` guides any denoiser;
:mod:`sdeflow.adapters` bridges to diffusers, k-diffusion and flow_matching; :mod:`sdeflow.compiled` runs
the fixed-grid loop as one compiled program or CUDA graph; :func:`invert` finds the noise a sampler maps
to given data; :mod:`sdeflow.editing` moves data from one condition to another; :mod:`sdeflow.reward`
fine-tunes a model towards a reward with a KL to its base.
"""

from . import analytic, grids, metrics, parameterizations, samplers, schedules
from . import adapters, compiled, editing, guidance, likelihood, reward
from .inversion import Inversion, invert
from .compiled import FixedGridLoop
from .denoisers import Denoiser, ModelDenoiser
from .grids import auto_grid, discrete_grid, karras_grid, logsnr_grid, polyexponential_grid, quadratic_grid, shift_grid, uniform_grid
from .noise import BrownianTreeNoise, GeneratorNoise, SeededNoise
from .run import NonFiniteError, SampleResult, StepInfo
from .sampling import prior_sample, sample
from .samplers import recommended

__version__ = "0.1.0"

#: Subpackages imported on first use (``sdeflow.pretrained.load_model(...)`` without importing them first).
_LAZY = ("data", "inverse", "models", "pretrained", "registry", "training", "tuning")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sdeflow' has no attribute {name!r}")

__all__ = ["adapters", "analytic", "compiled", "editing", "grids", "guidance", "likelihood", "metrics", "reward",
           "parameterizations", "samplers", "schedules", "Denoiser", "ModelDenoiser",
           "auto_grid", "discrete_grid", "karras_grid", "logsnr_grid", "polyexponential_grid", "quadratic_grid", "shift_grid",
           "uniform_grid", "BrownianTreeNoise", "GeneratorNoise", "SeededNoise",
           "NonFiniteError", "SampleResult", "StepInfo", "prior_sample", "recommended", "sample", "FixedGridLoop",
           "Inversion", "invert"]

"""k-diffusion's conventions, both ways.

k-diffusion works on the scaled state ``y = x / alpha`` with noise level ``sigma`` (``y = x0 + sigma
eps``): a *denoiser* is ``model(y, sigma, **extra_args) -> x0_hat`` and a sampler is
``sample_*(model, y, sigmas, extra_args=None, callback=None, disable=None)`` over a decreasing
``sigmas`` array that usually ends with 0. In sdeflow that is the EDM process (``alpha = 1``,
``sigma = sigma_max t``) with the ``x0`` parameterization and ``sigma`` time input:

- :func:`from_k_diffusion` wraps a k-diffusion denoiser (``k_diffusion.external.CompVisDenoiser``
  and friends, or any ``model(y, sigma) -> x0_hat``) as a sdeflow denoiser;
- :func:`sigmas_to_grid` turns a ``sigmas`` array into a sdeflow grid for that schedule;
- :func:`k_sampler` gives any sdeflow sampler k-diffusion's ``sample_*`` signature.

No import of k-diffusion is needed for any of these; :func:`import_k_diffusion` loads its sampling
modules without the training code's dependencies.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..denoisers import Denoiser, ModelDenoiser
from ..grids import from_sigmas
from ..noise import GeneratorNoise
from ..sampling import sample
from ..schedules import EDM


def k_schedule(sigma_max: float) -> EDM:
    """The sdeflow schedule of a k-diffusion model whose largest noise level is ``sigma_max``."""
    if not sigma_max > 0:
        raise ValueError(f"sigma_max must be > 0, got {sigma_max}")
    return EDM(sigma_max=float(sigma_max))


def from_k_diffusion(model: Callable, sigma_max: float = 80.0, *, dtype: torch.dtype | None = None) -> ModelDenoiser:
    """A k-diffusion denoiser ``model(y, sigma, **cond) -> x0_hat`` as a sdeflow denoiser on
    ``EDM(sigma_max)``; ``sigma_max``: the largest noise level you will sample from."""
    return ModelDenoiser(model, k_schedule(sigma_max), "x0", time_input="sigma", dtype=dtype)


def sigmas_to_grid(sigmas, sigma_max: float | None = None) -> torch.Tensor:
    """sdeflow times for a k-diffusion ``sigmas`` array on ``EDM(sigma_max)`` (default ``sigmas[0]``)."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu()
    return from_sigmas(sig, k_schedule(float(sig[0]) if sigma_max is None else sigma_max))


def k_sampler(sampler) -> Callable:
    """A sdeflow sampler (an instance, or a name of ``sdeflow list``) with k-diffusion's signature
    ``fn(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None)``.
    ``callback`` receives k-diffusion's dict after every step as k-diffusion fills it: ``x`` the state
    step ``i`` started from (after a churn sampler's noise: at ``sigma_hat``), ``sigma = sigmas[i]``, and
    ``denoised`` the step's first evaluation (a multistep step that reuses an evaluation: that one); stochastic
    samplers draw from ``noise_sampler(sigma, sigma_next)`` if given,
    else from the global RNG, as k-diffusion does."""
    if isinstance(sampler, str):
        from ..samplers import SAMPLERS

        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")
        sampler = SAMPLERS[sampler]()

    @torch.no_grad()
    def run(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
        ts = sigmas_to_grid(sigmas)
        denoiser = from_k_diffusion(model, float(torch.as_tensor(sigmas).flatten()[0]))
        schedule = denoiser.schedule
        noise = GeneratorNoise()
        if noise_sampler is not None:
            noise = _NoiseSampler(noise_sampler, schedule)
        if callback is not None:
            denoiser = _Recorded(denoiser)
            before = {"x": x}

            def hook(info):  # k-diffusion's contract: the state step i starts from and its first evaluation
                seen, denoiser.seen = denoiser.seen, []
                x_i, t_i, x_hat = seen[0] if seen else (before["x"], info.t, denoiser.last)
                callback({"x": x_i, "i": info.i, "sigma": float(schedule.sigma(info.t)),
                          "sigma_hat": float(schedule.sigma(t_i)), "denoised": x_hat})
                before["x"] = info.x

        return sample(denoiser, sampler, ts, x, cond=extra_args or {}, noise=noise, callback=hook if callback is not None else None,
                      progress=disable is False).x

    run.__name__ = f"sample_{type(sampler).__name__.lower()}"
    run.__doc__ = f"sdeflow's {sampler!r} with k-diffusion's sample_* signature."
    return run


def import_k_diffusion(*names: str):
    """k-diffusion's modules (default ``sampling`` and ``external``) without its package ``__init__``,
    which imports its training code and that code's heavy dependencies (torchvision, ...); only the
    one helper of ``k_diffusion.utils`` these modules use is provided. Returns the modules, or raises
    ImportError saying what is missing."""
    import importlib.util
    import sys
    import types

    names = names or ("sampling", "external")
    pkg = sys.modules.get("k_diffusion")
    if pkg is not None and getattr(pkg, "__path__", None):
        root = list(pkg.__path__)[0]
    else:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("k-diffusion is not installed (pip install --no-deps k-diffusion; "
                              "pip install torchsde torchdiffeq scipy)")
        root = list(spec.submodule_search_locations)[0]
    if pkg is None:
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = [root]
        utils = types.ModuleType("k_diffusion.utils")
        utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
        sys.modules["k_diffusion"], sys.modules["k_diffusion.utils"] = pkg, utils
        pkg.utils = utils
    mods = []
    for name in names:
        full = f"k_diffusion.{name}"
        if full not in sys.modules:
            s = importlib.util.spec_from_file_location(full, f"{root}/{name}.py")
            m = importlib.util.module_from_spec(s)
            sys.modules[full] = m
            try:
                s.loader.exec_module(m)
            except Exception as err:
                del sys.modules[full]
                raise ImportError(f"k-diffusion's {name} module could not be loaded: {err}") from err
            setattr(pkg, name, m)
        mods.append(sys.modules[full])
    return tuple(mods)


class _Recorded(Denoiser):
    """A denoiser that keeps its evaluations since the last look, ``(x_t, t, x_hat)``, and the last ``x_hat``."""

    def __init__(self, denoiser):
        super().__init__(denoiser.schedule)
        self.inner, self.seen, self.last = denoiser, [], None

    def forward(self, x_t, t, **cond):
        self.last = self.inner(x_t, t, **cond)
        self.seen.append((x_t, float(t), self.last))
        return self.last


class _NoiseSampler:
    """k-diffusion's ``noise_sampler(sigma, sigma_next)`` as a sdeflow noise source."""

    def __init__(self, fn, schedule):
        self.fn, self.schedule = fn, schedule

    def __call__(self, like, step, draw=0, span=None):
        if span is None:
            return self.fn(None, None)
        t, s = span
        return self.fn(self.schedule.sigma(t), self.schedule.sigma(s))


__all__ = ["from_k_diffusion", "import_k_diffusion", "k_sampler", "k_schedule", "sigmas_to_grid"]

"""Bridges to the libraries users already have models in. Each optional dependency is imported
only when its adapter is used.

- :mod:`.diffusers`: a diffusers network and scheduler as a sdeflow denoiser and grid
  (:func:`from_diffusers`), and sdeflow samplers as a diffusers scheduler (:class:`SdeflowScheduler`).
- :mod:`.k_diffusion`: k-diffusion denoisers (sigma in, denoised out) as sdeflow denoisers, sigma
  arrays as grids, and sdeflow samplers with k-diffusion's ``sample_*(model, x, sigmas)`` signature.
- :mod:`.flow_matching`: velocity fields with time running from noise (0) to data (1), and discrete models of
  its mixture paths (:func:`from_flow_matching_tokens`).
- :mod:`.ddbm`: DDBM's and DBIM's bridge networks (``net(x, c_noise, xT=...)``, VP or VE) as sdeflow bridges.

See ``docs/conventions.md`` for the conventions of each library and the sampler name table.
"""

from .ddbm import from_ddbm, load_ddbm_weights
from .diffusers import ClipSample, DiffusersBridge, from_diffusers, schedule_from_scheduler
from .flow_matching import from_flow_matching, from_flow_matching_tokens
from .k_diffusion import from_k_diffusion, import_k_diffusion, k_sampler, sigmas_to_grid

__all__ = ["ClipSample", "DiffusersBridge", "SdeflowScheduler", "from_ddbm", "from_diffusers", "from_flow_matching",
           "from_flow_matching_tokens", "from_k_diffusion", "import_k_diffusion", "k_sampler", "load_ddbm_weights",
           "schedule_from_scheduler", "sigmas_to_grid"]


def __getattr__(name):
    if name == "SdeflowScheduler":  # subclasses diffusers' scheduler classes: imported on first use
        from .scheduler import SdeflowScheduler

        return SdeflowScheduler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

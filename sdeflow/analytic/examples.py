"""Ready-made exact problems used by the demo, the tests and the benchmarks."""

from __future__ import annotations

import math

import torch

from .covariance import LowRankPlusDiagonal
from .mixture import GaussianMixture


def ring_2d(n_components: int = 8, radius: float = 2.0, seed: int = 0, n_classes: int = 0) -> GaussianMixture:
    """A 2-D ring of anisotropic Gaussians with unequal weights: well separated modes, so errors
    show up both as blur and as samples stranded between modes. ``n_classes > 0`` labels component
    ``k`` with class ``k mod n_classes`` (classes interleaved around the ring)."""
    g = torch.Generator().manual_seed(seed)
    ang = torch.arange(n_components, dtype=torch.float64) * (2 * math.pi / n_components)
    means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    # Each component is stretched along the ring's tangent.
    tangent = torch.stack([-torch.sin(ang), torch.cos(ang)], 1)
    radial = torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    big, small = 0.3 ** 2, 0.1 ** 2
    cov = big * tangent[:, :, None] * tangent[:, None, :] + small * radial[:, :, None] * radial[:, None, :]
    weights = 1.0 + torch.rand(n_components, generator=g, dtype=torch.float64)
    classes = torch.arange(n_components) % n_classes if n_classes else None
    return GaussianMixture(weights, means, cov, classes=classes)


def two_classes_1d(mean: float = 1.5, std: float = 0.5) -> GaussianMixture:
    """Two equally likely 1-D Gaussians ``N(-mean, std^2)`` (class 0) and ``N(mean, std^2)``
    (class 1): the smallest problem on which guidance visibly departs from its tilted target."""
    return GaussianMixture(torch.ones(2), torch.tensor([[-mean], [mean]]), torch.full((2, 1), std ** 2), classes=[0, 1])


def random_mixture(dim: int, n_components: int = 4, *, structure: str = "diagonal", rank: int = 4,
                   spread: float = 2.0, seed: int = 0) -> GaussianMixture:
    """A random anisotropic mixture in ``dim`` dimensions with variances spanning two decades.

    ``structure`` is ``"diagonal"``, ``"full"`` or ``"lowrank"`` (diagonal plus rank ``rank``)."""
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(n_components, dim, generator=g, dtype=torch.float64) / math.sqrt(dim) * 2
    var = torch.exp(torch.empty(n_components, dim, dtype=torch.float64).uniform_(math.log(1e-2), 0.0, generator=g))
    weights = 0.5 + torch.rand(n_components, generator=g, dtype=torch.float64)
    if structure == "diagonal":
        return GaussianMixture(weights, means, var)
    if structure == "full":
        q, _ = torch.linalg.qr(torch.randn(n_components, dim, dim, generator=g, dtype=torch.float64))
        return GaussianMixture(weights, means, q @ torch.diag_embed(var) @ q.transpose(1, 2))
    if structure == "lowrank":
        u = torch.randn(n_components, dim, rank, generator=g, dtype=torch.float64) / math.sqrt(dim)
        return GaussianMixture(weights, means, LowRankPlusDiagonal(var * 0.1, u))
    raise ValueError(f"unknown structure {structure!r}; allowed: diagonal, full, lowrank")


def gaussian(mean, cov) -> GaussianMixture:
    """A single Gaussian: ``mean`` ``(D,)``, ``cov`` ``(D,)`` variances or ``(D, D)``."""
    mean = torch.as_tensor(mean, dtype=torch.float64)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    return GaussianMixture(torch.ones(1), mean[None], cov[None])


def linear_gaussian_problem(dim: int = 6, measured: int = 3, noise_std: float = 0.1, seed: int = 0):
    """A linear-Gaussian inverse problem with its exact answer, in float64: a Gaussian prior (a random
    rotation of variances 0.2 to 1.5, mean ``0.3 N(0, I)``) observed through a random ``measured x dim``
    matrix ``A`` (entries ``N(0, 1 / dim)``) with noise ``noise_std``. Returns ``(prior, A, y, posterior)``,
    ``y`` one measurement ``(measured,)`` of a prior draw, ``posterior`` the exact ``p(x | y)``."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    lam = torch.linspace(0.2, 1.5, dim, dtype=torch.float64)
    prior = GaussianMixture(torch.ones(1, dtype=torch.float64), 0.3 * torch.randn(1, dim, generator=g, dtype=torch.float64),
                            ((q * lam) @ q.T)[None])
    A = torch.randn(measured, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    x_true = prior.sample(1, g)
    y = (x_true @ A.T + noise_std * torch.randn((1, measured), generator=g, dtype=torch.float64))[0]
    return prior, A, y, prior.posterior(A, y, noise_std)


def _problems():
    from ..names import NameTable

    return NameTable("problem", {
        "ring-2d": (lambda: (ring_2d(), (2,)), "a 2-D ring of 8 anisotropic Gaussians"),
        "labelled-ring-2d": (lambda: (ring_2d(n_classes=4), (2,)), "the ring with 4 classes of 2 components (guidance)"),
        "mixture-64d": (lambda: (random_mixture(64, 8, seed=1), (64,)), "an anisotropic 64-D mixture of 8"),
        "image-mixture": (lambda: (random_mixture(3 * 32 * 32, 4, seed=2), (3, 32, 32)), "a 3x32x32 mixture of 4, diagonal covariances"),
    })


#: Exact problems by name: ``() -> (mixture, sample shape)`` (a :class:`~sdeflow.names.NameTable`).
PROBLEMS = _problems()

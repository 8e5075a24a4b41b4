"""Measurement operators ``y = A(x) + noise_std * n`` with their adjoints.

Every linear operator acts on a batch ``x`` of shape ``(B, *shape)`` and returns ``(B, *out_shape)``;
``adjoint(y)`` applies ``A^T``. ``matrix()`` gives the dense ``(M, D)`` matrix (for small problems
and the exact Gaussian-mixture posterior). Subclasses with a cheap singular value decomposition
expose it through ``svd() -> (s, u, ut, vt, v)``: ``A = U diag(s) V^T`` with ``s`` the ``M`` singular
values and ``u``/``ut``/``vt``/``v`` functions applying ``U`` (flat ``(B, M)`` to measurement shape),
``U^T``, ``V^T`` (sample to flat ``(B, D)``) and ``V``. Every linear operator gives the
eigendecomposition of ``A A^T`` (``gram_eig``) and with it ``gram_apply(r, fn) = fn(A A^T) r``, a
function of the squared singular values: in closed form where ``A A^T`` is a multiple of the identity
(identity, masks, downsampling), from two small 1-D factors for separable blur kernels (``A A^T`` is a
Kronecker product), densely otherwise (up to ``MAX_DENSE`` measurements).

- :class:`Identity` (denoising), :class:`Mask` (inpainting), :class:`Blur` (convolution with a given
  kernel, zero boundary), :class:`Downsample` (average pooling by an integer factor:
  super-resolution), :class:`RandomProjection` (compressed sensing with a seeded Gaussian matrix),
  :class:`Matrix` (any dense matrix), and :class:`Nonlinear` (any differentiable function; no
  adjoint, the gradient methods differentiate it with autograd).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
from torch.nn import functional as F


class Operator:
    """Base class: ``shape`` (one input sample), ``out_shape``; ``__call__(x)``."""

    linear = False

    def __init__(self, shape: tuple[int, ...]):
        sizes = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else None
        if not sizes or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1 for n in sizes):
            raise ValueError(f"an operator's sample shape is a tuple of sizes >= 1 such as (1, 8, 8), got {shape!r}")
        self.shape = tuple(int(n) for n in sizes)

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not define how it acts (__call__)")

    def _check(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"{type(self).__name__} acts on samples of shape {self.shape}, got {tuple(x.shape[1:])}")

    def measure(self, x: torch.Tensor, noise_std: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """``A(x) + noise_std * n`` (noise drawn on the CPU from ``generator``)."""
        y = self(x)
        n = torch.randn(y.shape, generator=generator, dtype=torch.float64).to(device=y.device, dtype=y.dtype)
        return y + noise_std * n


class LinearOperator(Operator):
    """A linear measurement ``A``: subclasses define ``__call__`` and :meth:`adjoint`; the dense
    :meth:`matrix`, the output shape and the Gram solve ``(A A^T + lam I)^-1 r`` (closed form where a
    subclass knows it, conjugate gradients otherwise) follow."""

    linear = True

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self(torch.zeros(1, *self.shape, dtype=torch.float64)).shape[1:])

    @property
    def out_dim(self) -> int:
        return math.prod(self.out_shape)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not define its adjoint")

    def matrix(self) -> torch.Tensor:
        """Dense ``(M, D)`` float64 matrix (``A`` applied to the basis vectors)."""
        eye = torch.eye(self.dim, dtype=torch.float64).reshape(self.dim, *self.shape)
        return self(eye).reshape(self.dim, -1).T.contiguous()

    def gram_solve(self, r: torch.Tensor, lam: torch.Tensor | float, iters: int = 50) -> torch.Tensor:
        """Solve ``(A A^T + lam I) u = r`` per sample by conjugate gradients (overridden in closed
        form where ``A A^T`` is diagonal)."""
        return conjugate_gradient(lambda u: self(self.adjoint(u)) + _bcast(lam, u) * u, r, iters)

    def back_project(self, y: torch.Tensor, lam: float = 1e-3) -> torch.Tensor:
        """``A^T (A A^T + lam I)^-1 y``: measurements as a sample of the data's shape (the masked image, the
        upsampled low-resolution image), the source of a restoration bridge and the picture of a measurement."""
        return self.adjoint(self.gram_solve(y, lam))

    def conditional_draw(self, x_prior: torch.Tensor, var: float, y: torch.Tensor, noise_std: float,
                         n: torch.Tensor) -> torch.Tensor:
        """An exact draw from ``N(x; m, var I) N(y; A x, noise_std^2 I)`` (normalised in ``x``) given a draw
        ``x_prior = m + sqrt(var) z`` of the first factor and standard normal noise ``n`` shaped like the
        measurements, by Matheron's rule: ``x = x_prior + A^T (A A^T + noise_std^2 / var)^-1 (y - A x_prior - noise_std n)``."""
        k = x_prior.shape[0]
        y_sim = self(x_prior) + noise_std * n
        return x_prior + self.adjoint(self.gram_solve(y.expand(k, *y.shape) - y_sim, noise_std ** 2 / var))

    def gram_eig(self):
        """``(e, qt, q)``: ``A A^T = Q diag(e) Q^T`` with ``e`` float64 eigenvalues (the squared singular
        values, shape broadcastable against ``qt(r)``), ``qt`` mapping a batch of measurements to
        coordinates and ``q`` back. This default factorises the dense ``A A^T`` once."""
        if getattr(self, "_eig", None) is None:
            m = self.out_dim
            if m > MAX_DENSE:
                raise ValueError(f"{type(self).__name__} has {m} measurements; the dense eigendecomposition of A A^T "
                                 f"is limited to {MAX_DENSE}. Use a method based on conjugate gradients "
                                 "(mmps, pigdm, dps, diffpir) or an operator with a structured decomposition.")
            A = self.matrix()
            e, Q = torch.linalg.eigh(A @ A.T)
            self._eig = (e.clamp_min(0.0), Q)
        e, Q = self._eig
        out = self.out_shape

        def qt(r):
            return r.reshape(r.shape[0], -1) @ Q.to(device=r.device, dtype=r.dtype)

        def q(z):
            return (z @ Q.T.to(device=z.device, dtype=z.dtype)).reshape(z.shape[0], *out)

        return e, qt, q

    def gram_apply(self, r: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``fn(A A^T) r`` per sample; ``fn`` maps the eigenvalues ``e`` (float64) to factors of
        ``e``'s shape, or ``(B, *e.shape)`` for factors that differ between samples."""
        e, qt, q = self.gram_eig()
        z = qt(r)
        f = fn(e.to(z.device))
        if f.ndim > e.ndim:
            f = f.reshape(f.shape[0], *([1] * (z.ndim - 1 - e.ndim)), *e.shape)
        return q(f.to(z.dtype) * z)


MAX_DENSE = 8192


def _scaled_identity(c: float):
    """``gram_eig`` of an operator with ``A A^T = c I``."""
    return torch.tensor(float(c), dtype=torch.float64), (lambda r: r), (lambda z: z)


def _bcast(c, x):
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    return c.reshape(-1, *([1] * (x.ndim - 1))) if c.ndim == 1 else c


def conjugate_gradient(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 50,
                       tol: float = 1e-10) -> torch.Tensor:
    """Per-sample CG for a symmetric positive definite ``apply`` on a batch ``b`` ``(B, ...)``.
    Runs a fixed number of iterations (no host synchronisation); converged samples stay put."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    dims = tuple(range(1, b.ndim))
    rr = (r * r).sum(dims, keepdim=True)
    floor = tol * tol * rr.clamp_min(1e-300)
    for _ in range(iters):
        ap = apply(p)
        pap = (p * ap).sum(dims, keepdim=True)
        active = rr > floor
        alpha = torch.where(active, rr / torch.where(pap == 0, torch.ones_like(pap), pap), torch.zeros_like(rr))
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = (r * r).sum(dims, keepdim=True)
        beta = torch.where(active, rr_new / torch.where(rr == 0, torch.ones_like(rr), rr), torch.zeros_like(rr))
        p = r + beta * p
        rr = rr_new
    return x


class Identity(LinearOperator):
    """``A = I`` (denoising)."""

    def __call__(self, x):
        self._check(x)
        return x

    def adjoint(self, y):
        return y

    def svd(self):
        def flat(x):
            return x.reshape(x.shape[0], -1)
        def unflat(z):
            return z.reshape(z.shape[0], *self.shape)
        return torch.ones(self.dim, dtype=torch.float64), unflat, flat, flat, unflat

    def gram_solve(self, r, lam, iters=50):
        return r / (1 + _bcast(lam, r))

    def gram_eig(self):
        return _scaled_identity(1.0)


class Mask(LinearOperator):
    """Keep the entries where ``mask`` is true (inpainting); ``y`` is the kept entries, ``(B, M)``."""

    def __init__(self, mask: torch.Tensor):
        mask = torch.as_tensor(mask, dtype=torch.bool)
        super().__init__(mask.shape)
        self.mask = mask
        self.index = torch.nonzero(mask.flatten()).flatten()
        if self.index.numel() == 0:
            raise ValueError("the mask keeps nothing")

    def __call__(self, x):
        self._check(x)
        return x.reshape(x.shape[0], -1)[:, self.index.to(x.device)]

    def adjoint(self, y):
        out = y.new_zeros(y.shape[0], self.dim)
        out[:, self.index.to(y.device)] = y
        return out.reshape(y.shape[0], *self.shape)

    def gram_solve(self, r, lam, iters=50):
        return r / (1 + _bcast(lam, r))

    def gram_eig(self):
        return _scaled_identity(1.0)

    def svd(self):
        """``A = U S V^T`` with ``U = I``, ``S = 1`` and ``V^T`` the coordinate permutation that puts
        the kept entries first."""
        order = torch.cat([self.index, torch.nonzero(~self.mask.flatten()).flatten()])
        inv = torch.argsort(order)
        def vt(x):
            return x.reshape(x.shape[0], -1)[:, order.to(x.device)]
        def v(z):
            return z[:, inv.to(z.device)].reshape(z.shape[0], *self.shape)
        return torch.ones(self.index.numel(), dtype=torch.float64), lambda u: u, lambda u: u, vt, v


class Downsample(LinearOperator):
    """Average over ``factor x factor`` blocks of the last two axes (super-resolution)."""

    def __init__(self, shape, factor: int):
        super().__init__(shape)
        if isinstance(factor, bool) or not isinstance(factor, numbers.Integral) or factor < 1:
            raise ValueError(f"the downsampling factor must be an integer >= 1, got {factor!r}")
        if len(self.shape) < 2 or self.shape[-1] % factor or self.shape[-2] % factor:
            raise ValueError(f"downsampling by {factor} needs the last two sides of {self.shape} divisible by it")
        self.factor = int(factor)

    def __call__(self, x):
        self._check(x)
        lead = x.shape[:-2]
        return F.avg_pool2d(x.reshape(-1, 1, *x.shape[-2:]), self.factor).reshape(*lead, *(s // self.factor for s in x.shape[-2:]))

    def adjoint(self, y):
        lead = y.shape[:-2]
        up = y.reshape(-1, 1, *y.shape[-2:]).repeat_interleave(self.factor, -2).repeat_interleave(self.factor, -1)
        return (up / self.factor ** 2).reshape(*lead, *self.shape[-2:])

    def gram_solve(self, r, lam, iters=50):  # A A^T = I / factor^2
        return r / (1.0 / self.factor ** 2 + _bcast(lam, r))

    def gram_eig(self):
        return _scaled_identity(1.0 / self.factor ** 2)


class Blur(LinearOperator):
    """Convolution of each channel of ``(C, H, W)`` images with ``kernel`` (odd sides), zero boundary.
    ``Blur.gaussian(shape, std, size)`` builds the usual Gaussian kernel."""

    def __init__(self, shape, kernel: torch.Tensor):
        super().__init__(shape)
        kernel = torch.as_tensor(kernel, dtype=torch.float64)
        if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
            raise ValueError(f"the blur kernel must be 2-D with odd sides, got shape {tuple(kernel.shape)}")
        if len(self.shape) != 3:
            raise ValueError(f"blur acts on (C, H, W) images, got sample shape {self.shape}")
        self.kernel = kernel

    @classmethod
    def gaussian(cls, shape, std: float = 1.0, size: int | None = None) -> "Blur":
        size = size or 2 * math.ceil(2 * std) + 1
        r = torch.arange(size, dtype=torch.float64) - size // 2
        g = torch.exp(-0.5 * (r / std) ** 2)
        k = g[:, None] * g[None]
        return cls(shape, k / k.sum())

    def _conv(self, x, kernel):
        c = self.shape[0]
        w = kernel.to(device=x.device, dtype=x.dtype).expand(c, 1, *kernel.shape)
        return F.conv2d(x, w, padding=(kernel.shape[0] // 2, kernel.shape[1] // 2), groups=c)

    def __call__(self, x):
        self._check(x)
        return self._conv(x, self.kernel)

    def adjoint(self, y):
        return self._conv(y, torch.flip(self.kernel, (0, 1)))

    def gram_eig(self):
        """For a separable kernel ``k = a b^T`` every channel is ``X -> A_a X A_b^T`` (1-D zero-boundary
        convolutions), so ``A A^T = (A_a A_a^T) x (A_b A_b^T)`` per channel and its eigenvectors are
        products of the two small factors' (``H x H`` and ``W x W``). Other kernels: dense."""
        if getattr(self, "_factors", None) is None:  # once per operator
            self._factors = self._kronecker_factors()
        if self._factors is False:
            return super().gram_eig()
        e, qa, qb = self._factors

        def qt(r):
            return qa.T.to(device=r.device, dtype=r.dtype) @ r @ qb.to(device=r.device, dtype=r.dtype)

        def q(z):
            return qa.to(device=z.device, dtype=z.dtype) @ z @ qb.T.to(device=z.device, dtype=z.dtype)

        return e, qt, q

    def _kronecker_factors(self):
        """``(e, Q_a, Q_b)`` for a separable kernel, ``False`` otherwise."""
        u, sv, vh = torch.linalg.svd(self.kernel)
        if sv.numel() > 1 and float(sv[1]) > 1e-12 * float(sv[0]):
            return False
        a, b = u[:, 0] * sv[0].sqrt(), vh[0] * sv[0].sqrt()
        _, h, w = self.shape

        def conv_matrix(k, n):  # rows: outputs of the 1-D cross-correlation with zero padding
            p = k.numel() // 2
            m = torch.zeros(n, n, dtype=torch.float64)
            for i in range(n):
                for j in range(k.numel()):
                    if 0 <= i + j - p < n:
                        m[i, i + j - p] = k[j]
            return m

        ea, qa = torch.linalg.eigh(conv_matrix(a, h) @ conv_matrix(a, h).T)
        eb, qb = torch.linalg.eigh(conv_matrix(b, w) @ conv_matrix(b, w).T)
        return (ea[:, None] * eb[None, :]).clamp_min(0.0), qa, qb


class Matrix(LinearOperator):
    """Any dense ``(M, D)`` matrix acting on flattened samples of ``shape``."""

    def __init__(self, A: torch.Tensor, shape=None):
        A = torch.as_tensor(A, dtype=torch.float64)
        if A.ndim != 2:
            raise ValueError(f"A must be a matrix (M, D), got shape {tuple(A.shape)}")
        shape = tuple(shape) if shape is not None else (A.shape[1],)
        super().__init__(shape)
        if math.prod(shape) != A.shape[1]:
            raise ValueError(f"A has {A.shape[1]} columns but samples of shape {shape} have {math.prod(shape)} entries")
        self.A = A
        self._svd = None

    def __call__(self, x):
        self._check(x)
        return x.reshape(x.shape[0], -1) @ self.A.to(device=x.device, dtype=x.dtype).T

    def adjoint(self, y):
        return (y @ self.A.to(device=y.device, dtype=y.dtype)).reshape(y.shape[0], *self.shape)

    def matrix(self):
        return self.A

    def svd(self):
        if self._svd is None:
            self._svd = torch.linalg.svd(self.A, full_matrices=True)
        u, s, vh = self._svd

        def mm(m, x):
            return x.reshape(x.shape[0], -1) @ m.to(device=x.device, dtype=x.dtype).T

        return (s, lambda z: mm(u, z), lambda y: mm(u.T, y), lambda x: mm(vh, x),
                lambda z: mm(vh.T, z).reshape(z.shape[0], *self.shape))


class RandomProjection(Matrix):
    """Compressed sensing: ``m`` rows of a seeded Gaussian matrix with entries ``N(0, 1/m)``."""

    def __init__(self, shape, m: int, seed: int = 0):
        d = math.prod(tuple(shape))
        g = torch.Generator().manual_seed(seed)
        super().__init__(torch.randn(m, d, generator=g, dtype=torch.float64) / math.sqrt(m), shape)


class Nonlinear(Operator):
    """A user-defined differentiable operator ``fn(x) -> y`` (batched). Gradient-based methods
    differentiate it with autograd; the ensemble-Kalman method only evaluates it."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], shape):
        super().__init__(shape)
        self.fn = fn

    def __call__(self, x):
        self._check(x)
        return self.fn(x)


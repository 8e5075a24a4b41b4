"""Noise sources: randomness is injected into samplers, never drawn from a global RNG in a step.

A source is called as ``source(like, step, draw=0, span=None)`` and returns standard normal noise
shaped and typed like ``like``. ``step`` is the index of the sampling step (``-1`` for the prior
draw) and ``draw`` distinguishes several draws within one step. Samplers that integrate the
reverse SDE over an interval pass ``span = (t, s)``: a :class:`BrownianTreeNoise` then returns the
standardised increment ``(W(t) - W(s)) / sqrt(t - s)`` of one fixed Brownian path, so a run with more
steps refines the same path instead of drawing a new one. Other sources ignore ``span``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

_MASK = (1 << 63) - 1
_M64 = (1 << 64) - 1


def mix_seed(seed: int, step: int, draw: int) -> int:
    """Decorrelate ``(seed, step, draw)`` into one 63-bit generator seed (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + (step + 2) * 0xBF58476D1CE4E5B9 + (draw + 1) * 0x94D049BB133111EB) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return (z ^ (z >> 31)) & _MASK


def _seeds(seeds) -> list[int]:
    if isinstance(seeds, int):
        return [seeds]
    return [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]


# -------------------------------------------------------- counter-based normal draws, on any device
# Sample b's draw (step, draw) is a pure function of (seeds[b], step, draw, element index): a 64-bit
# key per sample and draw is hashed with the element's counter (two rounds of the splitmix64
# finaliser, integer arithmetic modulo 2^64), each 64-bit word gives two 32-bit uniforms, and the
# inverse normal CDF maps them to N(0, 1). Everything is elementwise tensor arithmetic on the
# sampling device (no Python loop over the batch); the integer part is exact everywhere, and the
# inverse CDF is evaluated element by element in float64, so a sample's noise does not depend on
# the batch it is drawn in.

def _signed(c: int) -> int:
    """A 64-bit pattern as the int64 value with the same bits."""
    c &= _M64
    return c - (1 << 64) if c >> 63 else c


_K1, _K2, _GAMMA = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB), _signed(0x9E3779B97F4A7C15)


def _srl(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (``>>`` on int64 is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser on int64 tensors (products wrap modulo 2^64), a bijection of 64-bit words."""
    z = (z ^ _srl(z, 30)) * _K1
    z = (z ^ _srl(z, 27)) * _K2
    return z ^ _srl(z, 31)


_COUNTERS: dict = {}


def _counters(pairs: int, device) -> torch.Tensor:
    """Hashed element counters ``mix64(j * gamma)``, ``j < pairs``, cached per length and device."""
    key = (pairs, str(device))
    out = _COUNTERS.get(key)
    if out is None:
        if len(_COUNTERS) > 16:
            _COUNTERS.clear()
        out = _COUNTERS[key] = _mix64(torch.arange(pairs, dtype=torch.int64, device=device) * _GAMMA)
    return out


class _SeedTable:
    """Per-sample seeds as hashed int64 words, kept on each device they are used on."""

    def __init__(self, seeds: list[int]):
        self.seeds = seeds
        self._on: dict[str, torch.Tensor] = {}

    def __len__(self):
        return len(self.seeds)

    def tables(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The hashed seeds ``(B,)`` and element counters on ``like``'s device (built once, then cached)."""
        if like.shape[0] != len(self.seeds):
            raise ValueError(f"{len(self.seeds)} seeds for a batch of {like.shape[0]}")
        device = like.device
        base = self._on.get(str(device))
        if base is None:
            base = self._on[str(device)] = _mix64(torch.tensor([_signed(s) for s in self.seeds], dtype=torch.int64,
                                                                 device=device))
        return base, _counters((math.prod(like.shape[1:]) + 1) // 2, device)

    def normal(self, like: torch.Tensor, step: int, draw: int) -> torch.Tensor:
        """Standard normal noise shaped like ``like`` (float64; float32 on devices without float64):
        row ``b`` depends only on ``seeds[b]``, ``step`` and ``draw``."""
        base, counters = self.tables(like)
        numel = math.prod(like.shape[1:])
        k1 = _mix64(base ^ _signed(mix_seed(0, step, draw)))
        k2 = _mix64(k1 + _signed(mix_seed(1, step, draw)))
        words = _mix64(_mix64(counters[None, :] ^ k1[:, None]) + k2[:, None])
        dtype = torch.float32 if like.device.type == "mps" else torch.float64
        u = torch.cat([_srl(words, 32), words & 0xFFFFFFFF], 1)[:, :numel].to(dtype).add_(0.5).mul_(2.0 ** -32)
        return torch.special.ndtri(u).reshape(like.shape)


class NoiseSource:
    """Base class: subclasses implement ``__call__``."""

    def __call__(self, like: torch.Tensor, step: int, draw: int = 0, span=None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def prepare(self, like: torch.Tensor) -> None:
        """Build whatever the source keeps per device and shape, without drawing (a traced or
        captured loop calls this first, so that the program itself creates no tables)."""


class SeededNoise(NoiseSource):
    """Per-sample seeds: sample ``b``'s noise depends only on ``seeds[b]``, the step and the draw,
    so results do not depend on the batch composition, and calling twice gives the same noise.

    The noise is generated on the state's device by counter-based hashing (no Python loop over the
    batch, no host-to-device copy); CPU and GPU draws agree to float rounding."""

    def __init__(self, seeds: Sequence[int] | torch.Tensor | int):
        self.seeds = _seeds(seeds)
        self._table = _SeedTable(self.seeds)

    def __call__(self, like, step, draw=0, span=None):
        return self._table.normal(like, step, draw).to(dtype=like.dtype)

    def prepare(self, like):
        self._table.tables(like)


class GeneratorNoise(NoiseSource):
    """Sequential draws from a ``torch.Generator`` (the global RNG when ``None``)."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def __call__(self, like, step, draw=0, span=None):
        return torch.randn(like.shape, generator=self.generator, dtype=like.dtype, device=like.device)


class BrownianTreeNoise(NoiseSource):
    """One Brownian path ``W_b(t)`` on ``[0, 1]`` per sample (per-sample seeds, as
    :class:`SeededNoise`), generated lazily by bisection: ``W(1) ~ N(0, 1)`` and each midpoint drawn
    from the Brownian bridge between its interval's ends with a generator seeded by the node, so
    any query reproduces the same path. Intervals shorter than ``tol`` are interpolated linearly.

    With ``span = (t, s)`` the source returns ``(W(t) - W(s)) / sqrt(|t - s|)``: steps over a finer
    grid see increments of the same path, so results change smoothly with the step count. Draws
    without a span (a Langevin corrector's noise, a restart jump) are independent seeded noise.
    """

    def __init__(self, seeds: Sequence[int] | torch.Tensor | int, tol: float = 2.0 ** -22):
        self.seeds = _seeds(seeds)
        self._table = _SeedTable(self.seeds)
        if not 0 < tol < 1:
            raise ValueError(f"tol must be in (0, 1), got {tol}")
        self.depth = math.ceil(-math.log2(tol))
        self._cache: dict[tuple, torch.Tensor] = {}
        self._shape = None

    def _node(self, like, level: int, index: int) -> torch.Tensor:
        """Standard normal draws of tree node ``(level, index)``, one per sample."""
        return self._table.normal(like, -1000 - level, index).to(torch.float64 if like.dtype == torch.float64
                                                                  else torch.float32)

    def path(self, like: torch.Tensor, t: float) -> torch.Tensor:
        """``W(t)`` for every sample (float32, or float64 for a float64 ``like``), on ``like``'s device.
        Nodes are cached (up to about 256 MB), so nearby queries share their bisection."""
        t = min(max(float(t), 0.0), 1.0)
        shape = (tuple(like.shape), like.dtype == torch.float64, str(like.device))
        if shape != self._shape or len(self._cache) > max(64, 2 ** 26 // max(like.numel(), 1)):
            self._shape, self._cache = shape, {}
        lo, hi = 0.0, 1.0
        w_hi = self._dyadic(like, 0, 1, None, None)
        w_lo = torch.zeros_like(w_hi)
        for level in range(1, self.depth + 1):
            if t in (lo, hi):
                break
            mid = 0.5 * (lo + hi)                                  # the dyadic point index / 2^level
            w_mid = self._dyadic(like, level, 2 * round(lo * 2 ** (level - 1)) + 1, (w_lo, w_hi), hi - lo)
            if t < mid:
                hi, w_hi = mid, w_mid
            else:
                lo, w_lo = mid, w_mid
        return w_lo if t == lo else w_hi if t == hi else w_lo + (t - lo) / (hi - lo) * (w_hi - w_lo)

    def _dyadic(self, like, level: int, index: int, ends, width) -> torch.Tensor:
        """``W`` at the dyadic point ``index / 2^level`` (``W(1)`` for level 0), drawn from the
        Brownian bridge between ``ends`` over an interval of length ``width``."""
        key = (level, index)
        w = self._cache.get(key)
        if w is None:
            z = self._node(like, level, index)
            w = z if ends is None else 0.5 * (ends[0] + ends[1]) + math.sqrt(width / 4) * z
            self._cache[key] = w
        return w

    def __call__(self, like, step, draw=0, span=None):
        if span is None:
            out = self._table.normal(like, step, draw)
        else:
            t, s = float(span[0]), float(span[1])
            if t == s:
                raise ValueError("a Brownian increment needs an interval of positive length")
            out = (self.path(like, t) - self.path(like, s)) / math.sqrt(abs(t - s))
            out = out if t > s else -out
        return out.to(device=like.device, dtype=like.dtype)


def as_noise(noise=None, generator: torch.Generator | None = None) -> NoiseSource:
    """The noise source of a run: a :class:`NoiseSource`, a ``torch.Generator`` (as
    :class:`GeneratorNoise`; also given as ``generator=``, as diffusers and k-diffusion users pass it),
    or None (the global RNG). Anything else is refused, before any work."""
    if generator is not None:
        if noise is not None:
            raise ValueError("give noise= (a noise source) or generator= (a torch.Generator), not both")
        noise = generator
    if noise is None:
        return GeneratorNoise()
    if isinstance(noise, torch.Generator):
        return GeneratorNoise(noise)
    if not isinstance(noise, NoiseSource) and not callable(noise):
        raise TypeError(f"noise must be a sdeflow NoiseSource (SeededNoise, GeneratorNoise, BrownianTreeNoise) or a "
                        f"torch.Generator, got {type(noise).__name__}")
    return noise

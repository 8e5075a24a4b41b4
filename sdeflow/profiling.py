"""Peak tensor memory of a piece of code, on any device.

:class:`PeakMemory` counts the bytes of every tensor storage created inside it while that storage is
alive (a storage is freed when its last tensor goes, views included; a view of a tensor made before
is not new memory) and keeps the maximum: the
memory the code's tensors need, free of allocator caching and of what existed before. It sees every
operator through a dispatch mode, so it slows the code down; use it to compare memory, not time.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class PeakMemory(TorchDispatchMode):
    """``with PeakMemory() as m: ...`` then ``m.peak`` (bytes alive at once at most) and ``m.live``
    (bytes still alive at exit, created inside)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._sizes: dict[int, int] = {}

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # an output sharing an input's storage (a view, an in-place result) allocated nothing
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor) and not t.is_meta}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t.is_meta:
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self._sizes and key not in inputs:
                    self._sizes[key] = storage.nbytes()
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key)
        return out

"""Process layout under ``torchrun``: rank, world size, device; gloo on CPU, NCCL on GPU. Used by both
sampling (``sdeflow sample`` shards its chunks) and training (DistributedDataParallel)."""

from __future__ import annotations

import atexit
import os

import torch

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def parse_device(text: str) -> str:
    """Check a ``--device`` value before any work: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``,
    and the device must exist on this machine."""
    text = str(text)
    kind, _, index = text.partition(":")
    if text == "auto" or text == "cpu":
        return text
    if kind == "cuda" and (not index or index.isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: no CUDA GPU is available on this machine; use --device cpu (or auto)")
        if index and int(index) >= torch.cuda.device_count():
            raise ValueError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return text
    if text == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError("--device mps: Apple's MPS backend is not available on this machine; use --device cpu")
        return text
    raise ValueError(f"unknown device {text!r}; allowed: {', '.join(DEVICES)}")


class Distributed:
    """Rank, world size and device of this process (initialises ``torch.distributed`` under torchrun)."""

    def __init__(self, device: str = "auto"):
        device = parse_device(device)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            device = f"cuda:{local}"
            torch.cuda.set_device(local)
        self.device = torch.device(device)
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            atexit.register(close)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()


def close() -> None:
    """Take down the process group this process started (a no-op when there is none). Registered to run
    at exit: a gloo group left for the interpreter's own teardown can abort the process (SIGABRT,
    "terminate called without an active exception") after all the work is done, failing a finished run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

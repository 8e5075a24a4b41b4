"""Process layout under ``torchrun``: rank, world size, device; gloo on CPU, NCCL on GPU."""

from __future__ import annotations

import os

import torch


class Distributed:
    """Rank, world size and device of this process (initialises ``torch.distributed`` under torchrun)."""

    def __init__(self, device: str = "auto"):
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

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()

"""Opt-in multi-process training on torch.distributed (``torchrun``), one small wrapper.

Without ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) everything here
is a no-op and the training loop runs as a single process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import Tensor


@dataclass
class DistContext:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel around ``model`` when distributed, else ``model``."""
        if not self.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def shard(self, seq: Sequence) -> Sequence:
        return seq[self.rank :: self.world_size]

    def shard_batches(
        self, global_batches: Iterator[tuple[Tensor, Tensor]]
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """From each global batch (same on every rank), this rank's share.

        A last global batch smaller than the world is dropped on every rank: a
        rank without images would skip the step and leave the others waiting
        in the gradient all-reduce.
        """
        for images, labels in global_batches:
            if self.enabled:
                if len(images) < self.world_size:
                    continue
                images, labels = (
                    images[self.rank :: self.world_size],
                    labels[self.rank :: self.world_size],
                )
            if len(images):
                yield images, labels

    def close(self) -> None:
        if self.enabled and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def init_distributed() -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        backend = "gloo"
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend)
    return DistContext(True, rank, world, device)

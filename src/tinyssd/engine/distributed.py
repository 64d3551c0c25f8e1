"""Opt-in multi-process training on torch.distributed (``torchrun``), one small wrapper.

Without ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) everything here
is a no-op and the training loop runs as a single process.

Each rank reads only its share of every global batch (``GlobalBatchSampler``,
DistributedSampler-style): the order is drawn from (seed, epoch) alone, the
same on every rank, so the ranks together take the steps one process takes
with the same global batch. BatchNorm sees the global batch only on CUDA
(SyncBatchNorm); on CPU (gloo) each rank normalises over its own share.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


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
        if self.device.type != "cuda":
            return torch.nn.parallel.DistributedDataParallel(model)
        # BatchNorm over the global batch, as one process would compute it (CUDA only)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index])

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


class GlobalBatchSampler(torch.utils.data.Sampler):
    """This rank's share of every global batch of a seeded epoch order.

    Yields lists of ``(index, flip)``: the data set indices of positions
    ``rank, rank + world_size, ...`` of each global batch, and whether to mirror
    each image (``flip``: one coin per image of the global batch). Call
    ``set_epoch(epoch)`` before each epoch, as with ``DistributedSampler``.

    The order and the coins come from one generator seeded ``seed + epoch``:
    ``randperm(n)``, then ``rand(len(batch))`` per global batch. A last global
    batch that would leave a rank fewer than ``min_share`` images is dropped on
    every rank: a rank without images would skip the step and leave the others
    waiting in the all-reduce, and one image alone fails BatchNorm on a 1x1 map.
    """

    def __init__(
        self,
        n: int,
        global_batch: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        flip: bool = False,
    ) -> None:
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.rank, self.world_size, self.flip = rank, world_size, flip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=generator)
        for idx in order.split(self.global_batch):
            if self.flip:
                coins = (torch.rand(len(idx), generator=generator) < 0.5).tolist()
            else:
                coins = [False] * len(idx)
            if len(idx) < self.min_share * self.world_size:
                continue
            share = slice(self.rank, None, self.world_size)
            yield list(zip(idx[share].tolist(), coins[share], strict=True))

    @property
    def min_share(self) -> int:
        """Images a rank needs in a step: 2, so that BatchNorm sees more than one value per
        channel on a 1x1 map (a set too small for that keeps its single images)."""
        return 2 if self.n >= 2 * self.world_size else 1

    def __len__(self) -> int:
        full, last = divmod(self.n, self.global_batch)
        return full + int(last >= self.min_share * self.world_size)

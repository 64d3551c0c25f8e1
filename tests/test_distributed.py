"""Multi-process training on torch.distributed: sharding, and a real two-process torchrun."""

import csv
import os
import subprocess
import sys

import pytest
import torch
from fixtures import write_tiny_bananas

from tinyssd.engine.distributed import DistContext, init_distributed


def _batches(*sizes):
    return [(torch.arange(n), torch.arange(n) * 10) for n in sizes]


def test_each_rank_gets_its_share_of_every_global_batch():
    shares = [list(DistContext(True, r, 2).shard_batches(_batches(4, 3))) for r in (0, 1)]
    assert [b[0].tolist() for b in shares[0]] == [[0, 2], [0, 2]]
    assert [b[0].tolist() for b in shares[1]] == [[1, 3], [1]]
    assert shares[1][0][1].tolist() == [10, 30]


def test_a_last_batch_smaller_than_the_world_is_dropped_on_every_rank():
    # otherwise rank 1 would skip the step while rank 0 waits in the all-reduce
    for rank in (0, 1):
        shares = list(DistContext(True, rank, 2).shard_batches(_batches(4, 1)))
        assert len(shares) == 1


def test_without_torchrun_everything_is_a_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed()
    assert not ctx.enabled and ctx.is_main
    model = torch.nn.Linear(2, 2)
    assert ctx.wrap(model) is model


@pytest.mark.slow
def test_torchrun_two_processes_train_and_rank_zero_writes_the_run(tmp_path):
    # 17 images, 8 per rank: the last global batch holds 1 image
    data = write_tiny_bananas(tmp_path / "data", n_train=17, n_val=4, size=64)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--standalone", "-m", "tinyssd", "train", "--data", str(data), "--epochs", "2",
           "--batch-size", "8", "--image-size", "64", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert (out / "last.safetensors").is_file() and (out / "best.safetensors").is_file()
    assert not list(out.glob("*.tmp*"))

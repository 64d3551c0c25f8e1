"""Multi-process training on torch.distributed: each rank's share; real two-process torchruns."""

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from fixtures import write_tiny_bananas

from tinyssd.checkpoint import read_checkpoint
from tinyssd.engine.distributed import DistContext, GlobalBatchSampler, init_distributed


def _epoch(n, batch, rank=0, world=1, flip=False, epoch=3):
    sampler = GlobalBatchSampler(n, batch, seed=5, rank=rank, world_size=world, flip=flip)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_the_ranks_together_read_each_global_batch_once():
    single = _epoch(8, 4, flip=True)
    shares = [_epoch(8, 4, rank, 2, flip=True) for rank in (0, 1)]
    for step, whole in enumerate(single):
        assert shares[0][step] == whole[0::2] and shares[1][step] == whole[1::2]
    reads = [i for share in shares for batch in share for i, _ in batch]
    assert sorted(reads) == list(range(8))


def test_the_order_depends_on_seed_and_epoch_alone():
    assert _epoch(10, 4, epoch=1) == _epoch(10, 4, epoch=1)
    assert _epoch(10, 4, epoch=1) != _epoch(10, 4, epoch=2)


def test_a_last_batch_smaller_than_the_world_is_dropped_on_every_rank():
    # otherwise rank 1 would skip the step while rank 0 waits in the all-reduce
    for rank in (0, 1):
        sampler = GlobalBatchSampler(9, 4, seed=0, rank=rank, world_size=2)
        assert len(list(sampler)) == len(sampler) == 2
    # one image alone fails BatchNorm on a 1x1 map: a last batch of one is dropped too,
    # a last batch of two kept, and a set of one image still trains
    assert len(GlobalBatchSampler(9, 4, seed=0)) == len(list(GlobalBatchSampler(9, 4, seed=0))) == 2
    assert len(GlobalBatchSampler(10, 4, seed=0)) == 3
    assert len(GlobalBatchSampler(1, 4, seed=0)) == 1


def test_without_torchrun_everything_is_a_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed()
    assert not ctx.enabled and ctx.is_main
    model = torch.nn.Linear(2, 2)
    assert ctx.wrap(model) is model
    assert isinstance(DistContext(), DistContext)


# Run by the tests below as `python LAUNCHER` and `torchrun LAUNCHER`: trains with each rank's
# train-image reads and file writes logged. BatchNorm is replaced by Identity: on CPU (no
# SyncBatchNorm) each rank normalises over its own share, which one process cannot repeat.
# The loss is the 5th argument: the chapter's (a mean over images) or focal_giou (divided by the
# positives of the global batch, all-reduced); the learning rate the 6th.
LAUNCHER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import torch
    import tinyssd.data.dataset as dataset_module
    import tinyssd.engine.train as train_module

    data, out, batch, logs = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    loss, lr = sys.argv[5], float(sys.argv[6])
    rank = os.environ.get("RANK", "single")
    reads, writes = [], []

    def logged_read(path, *args, **kwargs):
        reads.append(str(path))
        return original_read(path, *args, **kwargs)

    def audit(event, args):
        if event in ("open", "os.rename", "os.remove", "os.mkdir") and args[0] is not None:
            target = str(args[1] if event == "os.rename" else args[0])
            mode = args[1] if event == "open" else "w"
            if target.startswith(str(out)) and isinstance(mode, str) and any(
                    c in mode for c in "wax+"):
                writes.append(event + " " + target)

    def without_batchnorm(*args, **kwargs):
        model = original_ssd(*args, **kwargs)
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, torch.nn.BatchNorm2d):
                    setattr(module, name, torch.nn.Identity())
        return model

    original_read, dataset_module.read_image = dataset_module.read_image, logged_read
    original_ssd, train_module.SSD = train_module.SSD, without_batchnorm
    sys.addaudithook(audit)
    train_module.train(data=data, out=out, recipe="chapter", augment="flip", batch_size=batch,
                       epochs=1, image_size=64, cache="none", workers=0, precision="fp32",
                       progress=False, loss=loss, lr=lr)
    train_reads = [r for r in reads if "bananas_train" in r]
    (logs / f"{rank}.json").write_text(json.dumps({"reads": train_reads, "writes": writes}))
    """
)


@pytest.mark.slow
# focal_giou's gradients are ~100x the chapter loss's (a sum over ~10 positives, not a mean over
# 5444 anchors): at the chapter's lr 0.2 two steps turn float32 summation-order noise into chaos.
@pytest.mark.parametrize(("loss", "lr"), [("chapter", "0.2"), ("focal_giou", "0.002")])
def test_torchrun_two_ranks_equal_one_process_and_read_only_their_share(tmp_path, loss, lr):
    data = write_tiny_bananas(tmp_path / "data", n_train=16, n_val=2, size=64)
    (tmp_path / "launch.py").write_text(LAUNCHER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    runs = {
        "single": [sys.executable, str(tmp_path / "launch.py"), str(data),
                   str(tmp_path / "single"), "8", str(tmp_path), loss, lr],
        "ddp": [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--standalone", str(tmp_path / "launch.py"), str(data), str(tmp_path / "ddp"),
                "4", str(tmp_path), loss, lr],
    }  # fmt: skip
    for cmd in runs.values():
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
        assert done.returncode == 0, done.stderr[-3000:]

    single, _ = read_checkpoint(tmp_path / "single" / "last.safetensors")
    ddp, _ = read_checkpoint(tmp_path / "ddp" / "last.safetensors")
    params = [k for k in single if k.startswith("model.") and single[k].is_floating_point()]
    assert params
    for name in params:  # two steps of the global batch 8: the same weights
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-5)

    logs = {r: json.loads((tmp_path / f"{r}.json").read_text()) for r in ("single", "0", "1")}
    r0, r1 = set(logs["0"]["reads"]), set(logs["1"]["reads"])
    assert len(logs["0"]["reads"]) == len(r0) == 8 and len(r1) == 8 and not r0 & r1
    assert r0 | r1 == set(logs["single"]["reads"])
    assert logs["0"]["writes"] and not logs["1"]["writes"]  # only rank 0 writes the run


def _torchrun_train(
    data: Path, out: Path, epochs: int, batch_size: int
) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2 -m tinyssd train`` (the chapter recipe, 64 px)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--standalone", "-m", "tinyssd", "train", "--data", str(data), "--epochs",
           str(epochs), "--batch-size", str(batch_size), "--image-size", "64", "--out",
           str(out), "--recipe", "chapter"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)


@pytest.mark.slow
def test_torchrun_two_processes_train_and_rank_zero_writes_the_run(tmp_path):
    # 17 images, 8 per rank: the last global batch holds 1 image
    data = write_tiny_bananas(tmp_path / "data", n_train=17, n_val=4, size=64)
    out = tmp_path / "run"
    done = _torchrun_train(data, out, epochs=2, batch_size=8)
    assert done.returncode == 0, done.stderr[-2000:]
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert (out / "last.safetensors").is_file() and (out / "best.safetensors").is_file()
    assert not list(out.glob("*.tmp*"))


# On CUDA the loop adds pinned memory, non-blocking copies and --precision fp16 with a gradient
# scaler; without a GPU here, what can run on CPU is checked.


def test_fp16_is_a_usage_error_off_cuda():
    from tinyssd.errors import UsageError
    from tinyssd.inference import resolve_precision

    with pytest.raises(UsageError, match="fp16: CUDA only"):
        resolve_precision("fp16", torch.device("cpu"))


@pytest.mark.parametrize(
    ("cores", "ranks", "workers"), [(2, 1, 1), (2, 2, 0), (16, 1, 4), (16, 4, 3), (1, 1, 0)]
)
def test_default_workers_leave_each_rank_a_core_for_its_step(monkeypatch, cores, ranks, workers):
    from tinyssd.engine.inputs import default_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
    assert default_workers() == workers


@pytest.mark.parametrize("rank", ["0", "1"])
def test_every_rank_refuses_a_non_empty_out_before_joining_the_group(
    rank, tmp_path, monkeypatch, capsys
):
    from tinyssd.cli import main

    # torchrun's environment without its rendezvous: joining the group would fail here
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("LOCAL_RANK", rank)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("keep me")
    args = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")]
    assert main([*args, "--recipe", "chapter", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"tinyssd: error: --out {tmp_path / 'run'}: folder exists and is not empty "
        "(pick a new --out, --resume it, or pass --exist-ok)\n"
    )
    assert not torch.distributed.is_initialized()


@pytest.mark.slow
def test_torchrun_into_a_non_empty_out_stops_every_rank_with_the_same_line(tmp_path):
    data = write_tiny_bananas(tmp_path / "data", n_train=8, n_val=2, size=64)
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    done = _torchrun_train(data, out, epochs=1, batch_size=4)
    line = f"tinyssd: error: --out {out}: folder exists and is not empty"
    # each rank says it once, on a line of its own: the ranks share one stderr pipe, and a
    # line written in two parts (print's text, then its newline) was glued to the other's
    ours = [x for x in done.stderr.splitlines() if "tinyssd: " in x]
    assert len(ours) == 2 and all(x.startswith(line) for x in ours), done.stderr[-3000:]
    assert "gloo" not in done.stderr.lower() and done.returncode != 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]

"""What the ONNX tests share: a checkpoint with trained-like scores, comparing detections;
and bad model files (checkpoints and graphs) made from good ones."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, safe_open, save_file

from tinyssd.checkpoint import save_checkpoint
from tinyssd.models import build_model

CLASSES = ["cat", "dog"]


def run_json_snippet(snippet: str, cwd: Path) -> dict:
    """Run the (indented) Python ``snippet`` in a fresh interpreter in ``cwd`` and return
    the JSON it prints: what a user's own script, without tinyssd imported, gets."""
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(snippet)],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=True,
    )
    return json.loads(run.stdout)


def scored_checkpoint(path: Path, image_size: int) -> Path:
    """A fresh TinySSD with a trained model's kind of scores: mostly background (its
    bias raised), foreground scores spread from 0 to 1 (class logits scaled up)."""
    torch.manual_seed(0)
    model = build_model("tiny_ssd", len(CLASSES), image_size=image_size)
    with torch.no_grad():
        for head in model.cls_heads:
            head.weight *= 3
            head.bias.view(-1, len(CLASSES) + 1)[:, 0] += 6  # (a*K,) -> (a, K): background
    config = {
        "model": "tiny_ssd",
        "num_classes": len(CLASSES),
        "classes": CLASSES,
        "ssd": model.config.to_dict(),
    }
    return save_checkpoint(path, model, config)


def assert_same_detections(got: dict, want: dict, box_atol: float = 1e-4) -> None:
    """``got`` holds the rows of ``want`` (one image's ``boxes``, ``scores``, ``labels``),
    equal up to float rounding, by descending score; rows whose scores tie within
    rounding may come in either order."""
    boxes, scores, labels = (torch.as_tensor(got[k]) for k in ("boxes", "scores", "labels"))
    n = len(want["labels"])
    assert len(labels) == n, f"{len(labels)} detections, want {n}"
    if n == 0:
        return
    far = (boxes[:, None] - want["boxes"][None]).abs().amax(dim=-1)  # (n, n)
    far[labels[:, None] != want["labels"][None]] = torch.inf
    match = far.argmin(dim=1)  # got row i is want row match[i]
    assert sorted(match.tolist()) == list(range(n)), "not the same boxes and labels"
    assert far[torch.arange(n), match].max() <= box_atol
    torch.testing.assert_close(scores, want["scores"][match], rtol=1e-5, atol=1e-6)
    # a row out of its place has the score of the row in that place, within rounding
    torch.testing.assert_close(want["scores"][match], want["scores"], rtol=0, atol=1e-5)


def rewritten_checkpoint(
    source: Path,
    out: Path,
    header: str | None = None,
    change: Callable[[dict], object] | None = None,
    poison: float | None = None,
) -> Path:
    """A copy of the checkpoint ``source`` at ``out`` with its tinyssd metadata replaced by
    ``header`` (any text) or edited in place by ``change(meta)``, and with ``poison``
    (nan, inf) written into the first element of its first floating-point weight."""
    tensors = load_file(str(source))
    with safe_open(str(source), framework="pt") as f:
        text = f.metadata()["tinyssd"]
    if change is not None:
        meta = json.loads(text)
        change(meta)
        text = json.dumps(meta)
    if poison is not None:
        name = next(
            k for k, v in tensors.items() if k.startswith("model.") and v.is_floating_point()
        )
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = poison
    save_file(tensors, str(out), metadata={"tinyssd": header if header is not None else text})
    return out


def rewritten_graph(
    source: Path, out: Path, cut: float | None = None, poison: float | None = None, **metadata: str
) -> Path:
    """A copy of the ``tinyssd export`` graph ``source`` at ``out`` with the ``metadata``
    values given, ``poison`` (nan, inf) in the first element of its first floating-point
    initializer, and, with ``cut``, only that share of its bytes (a truncated download)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(source))
    for entry in proto.metadata_props:
        entry.value = metadata.pop(entry.key, entry.value)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    if poison is not None:
        init = next(
            t for t in proto.graph.initializer if numpy_helper.to_array(t).dtype == np.float32
        )
        array = numpy_helper.to_array(init).copy()
        array.reshape(-1)[0] = poison
        init.CopyFrom(numpy_helper.from_array(array, init.name))
    data = proto.SerializeToString()
    out.write_bytes(data[: int(len(data) * cut)] if cut is not None else data)
    return out

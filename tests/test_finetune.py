"""Fine-tuning: ``--init`` from any checkpoint, ``--pretrained`` ImageNet backbones, ``--freeze``.

No test touches the network: torchvision's download is replaced by one that
fails, and the "ImageNet" files are random torchvision models saved where
torchvision's cache keeps them.
"""

import logging
import os
from urllib.error import URLError

import pytest
import torch
from export_helpers import rewritten_checkpoint
from fixtures import save_untrained_checkpoint, write_tiny_bananas
from torchvision.models import MobileNet_V3_Large_Weights, mobilenet_v3_large

from tinyssd.checkpoint import read_checkpoint, save_checkpoint, split_state
from tinyssd.cli import main
from tinyssd.data.synthetic import make_synthetic
from tinyssd.engine.finetune import (
    BackboneFreeze,
    compact_names,
    load_imagenet_backbone,
    load_matching,
)
from tinyssd.engine.step import train_step
from tinyssd.engine.train import train
from tinyssd.errors import CheckpointError, UsageError
from tinyssd.losses import LossConfig, MultiBoxLoss
from tinyssd.models import SSD, build_model

WEIGHTS = MobileNet_V3_Large_Weights.IMAGENET1K_V1


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("synth"), train=8, val=2, classes=3, size=64)


@pytest.fixture(scope="module")
def one_class_run(tmp_path_factory):
    """A 1-class TinySSD checkpoint (untrained weights are as good a source as any)."""
    return save_untrained_checkpoint(tmp_path_factory.mktemp("src") / "best.safetensors", ["a"])


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty ``$TORCH_HOME`` and a download that fails as it does without a network."""

    def no_network(url, dst, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _train(data, out, **kw):
    # the chapter's recipe: small, stable and fixed, whatever the default recipe becomes
    args = dict(data=str(data), recipe="chapter", epochs=1, batch_size=4, image_size=64)
    args["precision"] = "fp32"  # SSDlite at 64 px in bf16 can overflow to NaN on a bad draw
    args["progress"] = False
    return train(out=str(out), **{**args, **kw})


def _model_tensors(path):
    return split_state(read_checkpoint(path)[0], "model.")


def test_compact_names_groups_numbered_siblings():
    names = [f"cls_heads.{i}.{p}" for i in range(5) for p in ("weight", "bias")]
    names += ["backbone.extras.1.0.weight", "backbone.extras.3.0.weight", "backbone.fc.weight"]
    assert compact_names(names) == "cls_heads.0-4, backbone.extras.1,3, backbone.fc"
    assert compact_names([]) == ""


def test_init_loads_matching_tensors_and_renews_class_heads_of_another_class_count(
    one_class_run,
):
    source = _model_tensors(one_class_run)
    torch.manual_seed(1)
    model = build_model("tiny_ssd", 3, image_size=64)
    report = load_matching(model, one_class_run)
    state = model.state_dict()
    renewed = [k for k in state if k.startswith("cls_heads.")]
    assert sorted(report.kept) == sorted(renewed) and len(renewed) == 10
    for name in report.loaded:
        torch.testing.assert_close(state[name], source[name], rtol=0, atol=0)
    assert len(report.loaded) == len(state) - 10
    assert state["cls_heads.0.weight"].shape == (4 * 4, 64, 3, 3)  # 4 anchors x (3 + 1)
    assert source["cls_heads.0.weight"].shape == (4 * 2, 64, 3, 3)
    expected = f"loaded {len(state) - 10} of {len(state)} tensors from {one_class_run}; "
    assert report.summary() == expected + "re-initialised: cls_heads.0-4"


def test_init_with_frozen_backbone_trains_three_classes_and_keeps_the_source_backbone(
    one_class_run, three_classes, tmp_path, caplog
):
    with caplog.at_level(logging.INFO, logger="tinyssd"):
        run = _train(three_classes, tmp_path / "ft", init=one_class_run, freeze="backbone")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded "))
    assert line.endswith("re-initialised: cls_heads.0-4") and "\n" not in line
    source, tuned = _model_tensors(one_class_run), _model_tensors(run / "last.safetensors")
    for name, value in source.items():  # weights and BatchNorm statistics alike
        if name.startswith("backbone."):
            torch.testing.assert_close(tuned[name], value, rtol=0, atol=0)
    assert not torch.equal(tuned["bbox_heads.0.weight"], source["bbox_heads.0.weight"])
    assert tuned["cls_heads.4.weight"].shape == (4 * 4, 128, 3, 3)
    assert read_checkpoint(run / "last.safetensors")[1]["config"]["num_classes"] == 3


def test_freeze_epochs_unfreezes_the_backbone_at_that_epoch(
    one_class_run, three_classes, tmp_path, caplog
):
    kw = dict(init=one_class_run, freeze="backbone", freeze_epochs=1, epochs=2)
    with caplog.at_level(logging.INFO, logger="tinyssd"):
        run = _train(three_classes, tmp_path / "ft", **kw)
    assert "epoch 2: backbone unfrozen" in caplog.messages
    source, tuned = _model_tensors(one_class_run), _model_tensors(run / "last.safetensors")
    assert not torch.equal(tuned["backbone.blk_0.0.0.weight"], source["backbone.blk_0.0.0.weight"])


def test_freeze_keeps_an_imagenet_trunk_and_trains_the_new_extra_layers():
    torch.manual_seed(0)
    model = build_model("ssd_resnet18", 2, image_size=64).train()
    freeze = BackboneFreeze(model, epochs=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    labels = torch.tensor([[[1.0, 0.1, 0.1, 0.5, 0.6]], [[2.0, 0.4, 0.3, 0.9, 0.8]]])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, weight_decay=5e-4)
    train_step(model, MultiBoxLoss(LossConfig.parse("chapter")), optimizer, images, labels)
    after = model.state_dict()
    extras = [k for k in after if k.startswith("backbone.extras.")]
    trunk = [k for k in after if k.startswith("backbone.") and k not in extras]
    assert trunk and all(torch.equal(before[k], after[k]) for k in trunk)  # BN statistics too
    assert all(not torch.equal(before[k], after[k]) for k in extras if k.endswith("running_mean"))
    freeze.set_epoch(5)  # epochs=0: frozen for the whole run
    assert not model.backbone.conv1.weight.requires_grad
    assert model.backbone.extras[0][0].weight.requires_grad


def test_init_of_another_architecture_is_one_line(one_class_run, three_classes, tmp_path):
    with pytest.raises(CheckpointError) as e:
        _train(three_classes, tmp_path / "x", init=one_class_run, model="tiny_fpn")
    message = str(e.value)
    assert message.startswith(f"{one_class_run}: holds model tiny_ssd (backbone tiny), ")
    assert "--model tiny_fpn" in message and "\n" not in message


def test_init_without_model_trains_the_checkpoints_model(three_classes, tmp_path):
    model = build_model("ssdlite320_mobilenet_v3_large", 1, image_size=64)
    config = {"model": model.config.name, "num_classes": 1, "ssd": model.config.to_dict()}
    source = save_checkpoint(tmp_path / "lite.safetensors", model, config)
    run = _train(three_classes, tmp_path / "ft", init=source, lr=1e-3)
    assert read_checkpoint(run / "last.safetensors")[1]["config"]["model"] == model.config.name


def test_init_of_a_missing_run_is_one_line(tmp_path):
    with pytest.raises(CheckpointError) as e:
        train(init=tmp_path / "none", data=str(tmp_path), progress=False)
    assert str(e.value) == f"--init {tmp_path / 'none'}: no such run folder or checkpoint file"


def test_init_refuses_a_checkpoint_whose_backbone_tensors_do_not_fit(tmp_path):
    # says tiny_ssd in its config, holds tiny_fpn's tensors
    model = build_model("tiny_fpn", 1)
    config = {"model": "tiny_ssd", "num_classes": 1, "ssd": build_model("tiny_ssd", 1).config}
    config["ssd"] = config["ssd"].to_dict()
    path = save_checkpoint(tmp_path / "odd.safetensors", model, config)
    with pytest.raises(CheckpointError, match=r"odd.safetensors: \d+ backbone tensors are missing"):
        load_matching(build_model("tiny_ssd", 1), path)


def test_init_on_the_command_line_fails_in_one_line(one_class_run, three_classes, capsys):
    argv = ["train", "--data", str(three_classes), "--init", str(one_class_run)]
    assert main([*argv, "--model", "ssd_resnet18", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinyssd: error: ") and "cannot initialise" in err and "\n" not in err


@pytest.mark.parametrize("model", [None, "tiny_ssd"])
def test_init_from_nan_weights_is_refused_before_any_data_is_read(
    one_class_run, three_classes, tmp_path, capsys, model
):
    # without --model the checkpoint's own is read from its metadata; with it, not at all
    bad = rewritten_checkpoint(one_class_run, tmp_path / "best.safetensors", poison=float("nan"))
    argv = ["train", "--data", str(three_classes), "--init", str(bad), "--no-progress"]
    argv += ["--out", str(tmp_path / "run"), *(["--model", model] if model else [])]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tinyssd: error: --init {bad}: weights hold NaN (model.")
    assert "\n" not in err and "lr" not in err
    assert not (tmp_path / "run" / "last.safetensors").exists()


def _fake_imagenet_file(folder):
    """A random torchvision MobileNetV3-Large saved under the name torchvision caches it as."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(3)
    state = mobilenet_v3_large().state_dict()
    path = folder / os.path.basename(WEIGHTS.url)
    torch.save(state, path)
    return path, state


def test_pretrained_loads_the_cached_torchvision_file(offline):
    # torch.hub checks the hash in the name only when it downloads: a cached file loads as it is
    path, state = _fake_imagenet_file(offline)
    assert path.name == "mobilenet_v3_large-8738ca79.pth"
    model = build_model("ssdlite320_mobilenet_v3_large", 2)
    report = load_imagenet_backbone(model, progress=False)
    own = model.backbone.state_dict()
    features = [k for k in state if not k.startswith("classifier.")]
    assert sorted(report.loaded) == sorted(f"backbone.{k}" for k in features)
    for name in features:
        torch.testing.assert_close(own[name], state[name], rtol=0, atol=0)
    assert compact_names(report.kept) == ("backbone.extras.0-3, cls_heads.0-5, bbox_heads.0-5")


def test_pretrained_trains_from_the_cached_file(offline, three_classes, tmp_path, caplog):
    _fake_imagenet_file(offline)
    kw = dict(model="ssdlite320_mobilenet_v3_large", pretrained=True, batch_size=8, lr=1e-3)
    with caplog.at_level(logging.INFO, logger="tinyssd"):
        run = _train(three_classes, tmp_path / "run", **kw)
    assert any("MobileNet_V3_Large_Weights.IMAGENET1K_V1" in m for m in caplog.messages)
    assert (run / "last.safetensors").is_file()


def test_pretrained_offline_without_the_file_is_one_line(offline):
    with pytest.raises(CheckpointError) as e:
        load_imagenet_backbone(build_model("ssdlite320_mobilenet_v3_large", 1), progress=False)
    message = str(e.value)
    expected = offline / "mobilenet_v3_large-8738ca79.pth"
    assert message.startswith("--pretrained: mobilenet_v3_large-8738ca79.pth is not in ")
    assert f"download {WEIGHTS.url} and put it at {expected}" in message
    assert "Temporary failure in name resolution" in message and "\n" not in message


def test_pretrained_offline_on_the_command_line_exits_2(offline, three_classes, capsys):
    argv = ["train", "--data", str(three_classes), "--model", "ssd_resnet18", "--pretrained"]
    assert main([*argv, "--image-size", "64", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinyssd: error: --pretrained: resnet18-f37072fd.pth is not in ")
    assert "Traceback" not in err and "\n" not in err


def test_a_corrupt_cached_file_is_one_line(offline):
    offline.mkdir(parents=True)
    (offline / os.path.basename(WEIGHTS.url)).write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="not a readable weights file .*delete it"):
        load_imagenet_backbone(build_model("ssdlite320_mobilenet_v3_large", 1), progress=False)


class _Payload:
    """Unpickled, it makes a folder: what a malicious pickle does, harmlessly."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_cached_pickle_of_other_objects_is_one_short_line_and_never_run(offline, tmp_path):
    offline.mkdir(parents=True)
    path = offline / os.path.basename(WEIGHTS.url)
    marker = tmp_path / "the-payload-ran"
    torch.save({"features.0.0.weight": _Payload(marker)}, path)
    with pytest.raises(CheckpointError) as e:
        load_imagenet_backbone(build_model("ssdlite320_mobilenet_v3_large", 1), progress=False)
    assert str(e.value) == (
        f"{path}: not a weights-only file: its pickle asks for posix.mkdir, left unread; "
        "delete it to download it again"
    )
    assert not marker.exists()


@pytest.mark.parametrize("model", ["tiny_ssd", "tiny_fpn"])
def test_pretrained_on_a_model_without_imagenet_weights_is_a_usage_error(model, tmp_path):
    with pytest.raises(UsageError, match=f"--pretrained: --model {model} has no ImageNet"):
        train(model=model, pretrained=True, data=str(tmp_path / "none"), progress=False)


def test_freeze_epochs_without_freeze_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="--freeze-epochs 2: needs --freeze backbone"):
        train(freeze_epochs=2, data=str(tmp_path / "none"), progress=False)


def test_tiny_bananas_checkpoint_initialises_itself_fully(tmp_path):
    # same classes, same model: every tensor is taken, nothing re-initialised
    data = write_tiny_bananas(tmp_path / "data", n_train=8, n_val=2, size=64)
    run = _train(data, tmp_path / "a")
    report = load_matching(build_model("tiny_ssd", 1, image_size=64), run)
    assert report.kept == [] and report.summary().endswith("re-initialised: none")


# ---------------------------------------------------------------------------- --pretrained coco

COCO = "ssdlite320_mobilenet_v3_large"


def _fake_coco_file(folder):
    """torchvision's SSDlite320 with random weights, saved under its COCO file name."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    from tinyssd.models.coco import COCO_WEIGHTS, coco_config, convert_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(4)
    tv = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    path = folder / os.path.basename(COCO_WEIGHTS[COCO].url)
    torch.save(tv.state_dict(), path)
    return path, convert_state_dict(tv.state_dict(), SSD(90, coco_config(COCO)))


def test_pretrained_coco_loads_all_but_the_class_heads_of_three_classes(offline):
    from tinyssd.engine.finetune import load_coco
    from tinyssd.models.coco import coco_config

    _, coco = _fake_coco_file(offline)
    torch.manual_seed(0)
    model = SSD(3, coco_config(COCO))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_coco(model, progress=False)
    state = model.state_dict()
    heads = [k for k in state if k.startswith("cls_heads.") and state[k].shape != coco[k].shape]
    assert sorted(report.kept) == sorted(heads) and len(heads) == 12  # 6 maps, 1x1 weight + bias
    for name in report.loaded:
        torch.testing.assert_close(state[name], coco[name], rtol=0, atol=0)
    for name in heads:
        torch.testing.assert_close(state[name], fresh[name], rtol=0, atol=0)
    assert report.summary().endswith("re-initialised: cls_heads.0-5")
    assert report.summary().startswith(f"loaded {len(state) - 12} of {len(state)} tensors from ")


def test_pretrained_coco_fine_tunes_three_classes_with_a_frozen_backbone(
    offline, three_classes, tmp_path, caplog
):
    from tinyssd.predict import load

    _, coco = _fake_coco_file(offline)
    kw = dict(model=COCO, pretrained="coco", freeze="backbone", batch_size=8, lr=1e-3)
    with caplog.at_level(logging.INFO, logger="tinyssd"):
        run = _train(three_classes, tmp_path / "run", **kw)
    lines = [m for m in caplog.messages if m.startswith("loaded ")]
    assert len(lines) == 1 and "SSDLite320_MobileNet_V3_Large_Weights.COCO_V1" in lines[0]
    assert lines[0].endswith("re-initialised: cls_heads.0-5")
    tuned = _model_tensors(run / "last.safetensors")
    trunk = [k for k in tuned if k.startswith("backbone.features.")]
    assert trunk and all(torch.equal(tuned[k], coco[k]) for k in trunk)  # frozen, BN stats too
    assert not torch.equal(tuned["bbox_heads.0.1.weight"], coco["bbox_heads.0.1.weight"])
    ssd = read_checkpoint(run / "last.safetensors")[1]["config"]["ssd"]
    assert ssd["backbone"] == "mobilenet_v3_large_reduced" and ssd["clip_anchors"]
    assert ssd["pixel_mean"] == [127.5] * 3
    assert len(load(run, device="cpu").classes) == 3  # predicts with the COCO geometry


def test_pretrained_coco_offline_fails_in_one_line_before_reading_data(offline, tmp_path, capsys):
    argv = ["train", "--data", str(tmp_path / "no-such-data"), "--model", COCO]
    assert main([*argv, "--pretrained", "coco", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    name = "ssdlite320_mobilenet_v3_large_coco-a79551df.pth"
    assert err.startswith(f"tinyssd: error: --pretrained: {name} is not in {offline} ")
    assert "https://download.pytorch.org/models/" + name in err and "\n" not in err


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("tiny_fpn", {}, "--pretrained coco: --model tiny_fpn has no COCO weights"),
        (COCO, {"anchors": "auto"}, "--anchors auto: --pretrained coco keeps COCO's anchors"),
        ("ssd300_vgg16", {"image_size": 512}, "--image-size 512: ssd300_vgg16's COCO anchors"),
    ],
)
def test_pretrained_coco_refuses_what_its_weights_cannot_start(model, extra, message, tmp_path):
    with pytest.raises(UsageError, match=message):
        train(model=model, pretrained="coco", data=str(tmp_path), progress=False, **extra)


def test_pretrained_takes_imagenet_alone_or_a_value_and_old_configs_still_load():
    from tinyssd.cli import build_parser
    from tinyssd.config import TrainConfig

    parser = build_parser()
    assert parser.parse_args(["train", "--pretrained"]).pretrained == "imagenet"
    assert parser.parse_args(["train", "--pretrained", "coco"]).pretrained == "coco"
    assert parser.parse_args(["train", "--pretrained", "--epochs", "2"]).pretrained == "imagenet"
    assert TrainConfig.from_dict({"pretrained": True}).pretrained == "imagenet"
    assert TrainConfig.from_dict({"pretrained": False}).pretrained == "none"
    assert TrainConfig(pretrained="coco", out="x").resolved().anchors == "fixed"

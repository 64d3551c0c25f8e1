"""Networks: TinySSD layer for layer as the chapter's, SSD300's 8732 anchors, configs."""

import hashlib
import json

import pytest
import torch

from tinyssd.anchors import cell_box_sizes, multibox_prior
from tinyssd.engine.step import train_step
from tinyssd.losses import LossConfig, MultiBoxLoss
from tinyssd.models import PRESETS, SSDConfig, TinySSD, build_model, ssd300_vgg16, tiny_ssd
from tinyssd.models.config import tiny_fpn, tiny_fpn_p2
from tinyssd.models.prior import class_prior_bias, init_class_prior


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return TinySSD(1).eval()


def test_tiny_ssd_output_shapes_at_256(tiny):
    with torch.no_grad():
        anchors, cls_preds, bbox_preds = tiny(torch.rand(2, 3, 256, 256) * 255)
    # maps 32, 16, 8, 4, 1; 4 anchors per cell: 4 * (1024 + 256 + 64 + 16 + 1) = 5444
    assert anchors.shape == (1, 5444, 4)
    assert cls_preds.shape == (2, 5444, 2)
    assert bbox_preds.shape == (2, 4 * 5444)


def test_tiny_ssd_anchors_follow_the_feature_maps_at_384(tiny):
    with torch.no_grad():
        anchors, cls_preds, bbox_preds = tiny(torch.rand(1, 3, 384, 384) * 255)
    sides = (48, 24, 12, 6, 1)
    num_anchors = 4 * sum(s * s for s in sides)
    assert num_anchors == 12244
    assert anchors.shape == (1, num_anchors, 4)
    assert cls_preds.shape == (1, num_anchors, 2)
    assert bbox_preds.shape == (1, 4 * num_anchors)
    config = tiny_ssd()
    expected = torch.cat(
        [
            multibox_prior(torch.zeros(1, 1, s, s), sizes, ratios)[0]
            for s, sizes, ratios in zip(sides, config.sizes, config.ratios)
        ]
    )
    assert torch.equal(anchors[0], expected)


def test_uint8_input_equals_float_input(tiny):
    images = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8)
    with torch.no_grad():
        from_uint8 = tiny(images)
        from_float = tiny(images.float())
    for a, b in zip(from_uint8, from_float, strict=True):
        assert torch.equal(a, b)


def test_num_classes_sets_the_class_head_width():
    model = TinySSD(3).eval()
    with torch.no_grad():
        _, cls_preds, _ = model(torch.zeros(1, 3, 64, 64))
    # maps 8, 4, 2, 1, 1 at 64 px
    assert cls_preds.shape == (1, 4 * (64 + 16 + 4 + 1 + 1), 4)


def _chapter_name(ours: str) -> str:
    """``backbone.blk_i.X`` -> ``blk_i.X``, ``cls_heads.i.X`` -> ``cls_i.X``, bbox likewise."""
    head, rest = ours.split(".", 1)
    if head == "backbone":
        return rest
    index, param = rest.split(".", 1)
    return f"{head.removesuffix('_heads')}_{index}.{param}"


def test_parameters_match_the_chapter_one_to_one(tiny, chapter):
    ref = chapter.TinySSD(num_classes=1)
    assert sum(p.numel() for p in tiny.parameters()) == sum(p.numel() for p in ref.parameters())
    ours, theirs = tiny.state_dict(), ref.state_dict()
    mapped = [_chapter_name(k) for k in ours]
    assert sorted(mapped) == sorted(theirs)
    for name, key in zip(ours, mapped, strict=True):
        assert ours[name].shape == theirs[key].shape, name
    # within each kind (backbone, class heads, box heads) the order is the chapter's
    for kind in ("blk_", "cls_", "bbox_"):
        assert [k for k in mapped if k.startswith(kind)] == [
            k for k in theirs if k.startswith(kind)
        ]


def test_chapter_weights_give_the_chapter_outputs(tiny, chapter):
    torch.manual_seed(1)
    ref = chapter.TinySSD(num_classes=1)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        ref.train()(torch.rand(4, 3, 64, 64) * 255)
    ref.eval()
    model = TinySSD(1).eval()
    state = ref.state_dict()
    model.load_state_dict({k: state[_chapter_name(k)] for k in model.state_dict()})
    images = torch.rand(2, 3, 256, 256) * 255
    with torch.no_grad():
        for a, b in zip(model(images), ref(images), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_ssd300_vgg16_has_8732_anchors():
    model = build_model("ssd300_vgg16", num_classes=20).eval()
    with torch.no_grad():
        anchors, cls_preds, bbox_preds = model(torch.zeros(1, 3, 300, 300, dtype=torch.uint8))
    # maps 38, 19, 10, 5, 3, 1 with 4, 6, 6, 6, 4, 4 anchors per cell:
    # 5776 + 2166 + 600 + 150 + 36 + 4 = 8732
    assert anchors.shape == (1, 8732, 4)
    assert cls_preds.shape == (1, 8732, 21)
    assert bbox_preds.shape == (1, 4 * 8732)
    assert ssd300_vgg16().anchors_per_cell() == [4, 6, 6, 6, 4, 4]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_dict_round_trip(name):
    config = PRESETS[name]()
    assert SSDConfig.from_dict(config.to_dict()) == config
    # through JSON, where tuples come back as lists (the run folder's config file)
    assert SSDConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_build_model_overrides_and_rejects_unknown_names():
    model = build_model("tiny_ssd", 2, ratios=((1, 2),) * 5)
    assert model.config.anchors_per_cell() == [3] * 5
    assert model.cls_heads[0].out_channels == 3 * 3
    with pytest.raises(ValueError, match="unknown model 'yolo'"):
        build_model("yolo", 1)


def test_tiny_fpn_maps_anchors_and_shapes():
    model = build_model("tiny_fpn", num_classes=3).eval()
    with torch.no_grad():
        anchors, cls_preds, bbox_preds = model(torch.zeros(2, 3, 256, 256, dtype=torch.uint8))
        feats = model.backbone(torch.zeros(1, 3, 256, 256))
    assert [tuple(f.shape[1:]) for f in feats] == [(96, s, s) for s in (32, 16, 8, 4, 2)]
    # 6 anchors per cell: 6 * (1024 + 256 + 64 + 16 + 4) = 8184
    assert anchors.shape == (1, 8184, 4)
    assert cls_preds.shape == (2, 8184, 4)
    assert bbox_preds.shape == (2, 4 * 8184)
    config = tiny_fpn()
    assert config.anchors_per_cell() == [6] * 5
    sizes = [s for level in config.sizes for s in level]
    assert sizes == sorted(sizes) and sizes[0] == 0.05 and sizes[-1] == 0.9


def test_tiny_fpn_is_small_and_follows_the_input_size():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(build_model("tiny_fpn", 1)) < 2_000_000
    assert build_model("tiny_fpn", 1, image_size=384).config.image_size == 384
    with torch.no_grad():
        anchors, _, _ = build_model("tiny_fpn", 1).eval()(torch.zeros(1, 3, 384, 384))
    assert anchors.shape == (1, 6 * (48 * 48 + 24 * 24 + 12 * 12 + 6 * 6 + 3 * 3), 4)


def test_tiny_fpn_keeps_its_parameter_names_so_its_checkpoints_load():
    state = build_model("tiny_fpn", num_classes=3).state_dict()
    layout = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    # captured before the backbone took its p2 flag: 116 tensors, names and shapes in order
    assert len(state) == 116
    assert hashlib.sha256(layout.encode()).hexdigest()[:16] == "ebbcdfbe6a89a1f0"
    assert not any("lateral2" in k or "smooth2" in k for k in state)


def test_tiny_fpn_p2_adds_a_stride_4_map_to_tiny_fpns_five():
    model = build_model("tiny_fpn_p2", num_classes=3).eval()
    with torch.no_grad():
        anchors, cls_preds, bbox_preds = model(torch.zeros(2, 3, 256, 256, dtype=torch.uint8))
        feats = model.backbone(torch.zeros(1, 3, 256, 256))
    assert [tuple(f.shape[1:]) for f in feats] == [(96, s, s) for s in (64, 32, 16, 8, 4, 2)]
    # 6 anchors per cell: 6 * (4096 + 1024 + 256 + 64 + 16 + 4) = 32760
    assert anchors.shape == (1, 32760, 4)
    assert cls_preds.shape == (2, 32760, 4) and bbox_preds.shape == (2, 4 * 32760)
    config = tiny_fpn_p2()
    assert config.anchors_per_cell() == [6] * 6 and config.image_size == 256
    # one step finer on tiny_fpn's ladder (x 0.725 per size), then tiny_fpn's own sizes
    assert config.sizes == ((0.026, 0.036), *tiny_fpn().sizes)
    assert config.ratios == tiny_fpn().ratios[:1] * 6


def test_tiny_fpn_p2s_finest_anchors_lie_on_a_4_pixel_grid():
    model = build_model("tiny_fpn_p2", num_classes=1).eval()
    with torch.no_grad():
        anchors, _, _ = model(torch.zeros(1, 3, 256, 256))
    finest = anchors[0, : 6 * 64 * 64] * 256  # pixels; cell-major, 6 per cell
    centres = (finest[:, :2] + finest[:, 2:]) / 2
    grid = torch.arange(64) * 4.0 + 2  # cell centres 2, 6, ..., 254
    want_x = grid.repeat_interleave(6).repeat(64)  # x runs fastest over the cells
    want_y = grid.repeat_interleave(6 * 64)
    torch.testing.assert_close(centres[:, 0], want_x, atol=1e-3, rtol=0)
    torch.testing.assert_close(centres[:, 1], want_y, atol=1e-3, rtol=0)
    # its smallest anchor: a square of 0.026 * 256 = 6.7 px
    torch.testing.assert_close(finest[0, 2:] - finest[0, :2], torch.tensor([6.656, 6.656]))
    next_map = anchors[0, 6 * 64 * 64] * 256  # the S/8 map's first cell: centre (4, 4)
    torch.testing.assert_close((next_map[:2] + next_map[2:]) / 2, torch.tensor([4.0, 4.0]))


def test_tiny_fpn_p2s_five_coarser_maps_are_tiny_fpns_with_the_same_weights():
    torch.manual_seed(0)
    five, six = build_model("tiny_fpn", 1).eval(), build_model("tiny_fpn_p2", 1).eval()
    missing, unexpected = six.backbone.load_state_dict(five.backbone.state_dict(), strict=False)
    assert sorted({k.split(".")[0] for k in missing}) == ["lateral2", "smooth2"]
    assert unexpected == []
    images = torch.rand(1, 3, 128, 128) * 255
    with torch.no_grad():
        maps5, maps6 = five.backbone(images), six.backbone(images)
    assert len(maps6) == 6 and maps6[0].shape[-1] == 32
    for a, b in zip(maps5, maps6[1:], strict=True):
        assert torch.equal(a, b)


def test_tiny_fpn_p2_trains_one_step():
    torch.manual_seed(0)
    model = build_model("tiny_fpn_p2", 2, image_size=128).train()
    images = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8)
    # collate's rows: class 1..C; boxes of 0.03-0.04 of the image: only the S/4 map's sizes
    labels = torch.tensor([[[1.0, 0.1, 0.1, 0.14, 0.14]], [[2.0, 0.4, 0.3, 0.43, 0.34]]])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    step = train_step(model, MultiBoxLoss(LossConfig.parse("chapter")), optimizer, images, labels)
    assert torch.isfinite(step.losses["loss"])
    after = model.state_dict()
    for part in ("backbone.lateral2.", "backbone.smooth2.", "cls_heads.0.", "bbox_heads.0."):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(part))


def test_class_prior_bias_gives_the_prior_probability():
    bias = class_prior_bias(3, prior=0.01)
    torch.testing.assert_close(bias.softmax(0), torch.tensor([0.97, 0.01, 0.01, 0.01]))
    with pytest.raises(ValueError, match="prior"):
        class_prior_bias(200, prior=0.01)


def test_init_class_prior_sets_every_anchor_of_every_head():
    model = build_model("tiny_fpn", num_classes=2).eval()
    init_class_prior(model.cls_heads, 2, prior=0.02)
    for head in model.cls_heads:  # 6 anchors per cell, (background, class 1, class 2) each
        torch.testing.assert_close(
            head.bias.view(-1, 3).softmax(1), torch.tensor([[0.96, 0.02, 0.02]]).expand(6, 3)
        )


# Backbones from torchvision: (preset, input side, map sides there, anchors per cell, anchors).
TORCHVISION_BACKBONES = [
    ("ssdlite320_mobilenet_v3_large", 320, (20, 10, 5, 3, 2, 1), (6,) * 6, 3234),
    ("ssd_resnet18", 300, (38, 19, 10, 5, 3, 2), (4, 6, 6, 6, 4, 4), 8744),
    ("ssd_resnet50", 300, (38, 19, 10, 5, 3, 2), (4, 6, 6, 6, 4, 4), 8744),
]


@pytest.mark.parametrize(("name", "size", "sides", "per_cell", "total"), TORCHVISION_BACKBONES)
def test_torchvision_backbones_have_their_documented_anchors(name, size, sides, per_cell, total):
    model = build_model(name, 2).eval()
    assert model.config.image_size == size
    assert tuple(model.config.anchors_per_cell()) == per_cell
    assert sum(a * s * s for a, s in zip(per_cell, sides)) == total
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, size, size))
        anchors, cls_preds, bbox_preds = model(torch.zeros(1, 3, size, size))
    assert [f.shape[-1] for f in feats] == list(sides)
    assert [f.shape[1] for f in feats] == list(model.config.channels)
    assert anchors.shape == (1, total, 4) and cls_preds.shape == (1, total, 3)
    assert bbox_preds.shape == (1, 4 * total)


@pytest.mark.parametrize("name", [b[0] for b in TORCHVISION_BACKBONES])
def test_torchvision_backbones_train_one_step(name):
    torch.manual_seed(0)
    model = build_model(name, 2, image_size=128).train()
    images = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8)
    labels = torch.tensor(
        [[[1.0, 0.1, 0.1, 0.5, 0.6]], [[2.0, 0.4, 0.3, 0.9, 0.8]]]
    )  # collate's rows: class 1..C
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    step = train_step(model, MultiBoxLoss(LossConfig.parse("chapter")), optimizer, images, labels)
    assert torch.isfinite(step.losses["loss"])
    after = model.state_dict()
    for part in ("backbone.", "cls_heads.", "bbox_heads."):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(part))


def test_ssdlite_mirrors_torchvisions_ssdlite320(monkeypatch):
    # torchvision reduces MobileNet's tail when it loads no ImageNet weights; tinyssd never does
    import torchvision.models.detection.ssdlite as tv_ssdlite

    full_tail = tv_ssdlite.mobilenet_v3_large
    monkeypatch.setattr(
        tv_ssdlite, "mobilenet_v3_large", lambda **kw: full_tail(**{**kw, "reduced_tail": False})
    )
    reference = tv_ssdlite.ssdlite320_mobilenet_v3_large(weights_backbone=None, num_classes=3)
    model = build_model("ssdlite320_mobilenet_v3_large", 2)

    def count(*modules):
        return sum(p.numel() for m in modules for p in m.parameters())

    assert count(model.backbone) == count(reference.backbone)
    assert count(model.cls_heads, model.bbox_heads) == count(reference.head)
    # the same anchor shapes, in the same order, on every map
    generator = reference.anchor_generator
    for k, (sizes, ratios) in enumerate(zip(model.config.sizes, model.config.ratios)):
        torch.testing.assert_close(
            cell_box_sizes(sizes, ratios), generator._wh_pairs[k], rtol=1e-4, atol=0
        )


def test_configs_without_a_head_field_read_as_conv_heads():
    saved = tiny_ssd().to_dict()
    del saved["head"]
    assert SSDConfig.from_dict(saved).head == "conv"
    keys = TinySSD(1).state_dict()
    assert "cls_heads.0.weight" in keys and "bbox_heads.4.bias" in keys
    separable = build_model("ssdlite320_mobilenet_v3_large", 1)
    assert separable.cls_heads[0].out_channels == 6 * 2 and separable.cls_heads[0].bias.shape == (
        12,
    )


def test_init_class_prior_sets_the_separable_heads_of_ssdlite():
    model = build_model("ssdlite320_mobilenet_v3_large", num_classes=2).eval()
    init_class_prior(model.cls_heads, 2, prior=0.02)
    for head in model.cls_heads:  # the bias of each head's 1x1 conv
        torch.testing.assert_close(
            head[1].bias.view(-1, 3).softmax(1), torch.tensor([[0.96, 0.02, 0.02]]).expand(6, 3)
        )

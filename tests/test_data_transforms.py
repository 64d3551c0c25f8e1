import pytest
import torch

from tinyssd.data.transforms import (
    PARTS,
    AnchorBoundedAugment,
    bounded_zoom_out,
    centre_crop_boxes,
    parse_augment,
    train_transform,
    zoom_out_limit,
)
from tinyssd.images import resize_image

BOXES = torch.tensor([[10.0, 20.0, 100.0, 150.0], [150.0, 50.0, 290.0, 190.0]])
LABELS = torch.tensor([1, 2])


def _image(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, 200, 300), dtype=torch.uint8, generator=g)


def test_output_is_uint8_at_model_size_with_boxes_inside():
    t = train_transform(128)
    torch.manual_seed(0)
    for _ in range(30):
        image, boxes, labels = t(_image(), BOXES, LABELS)
        assert image.shape == (3, 128, 128) and image.dtype == torch.uint8
        assert len(boxes) == len(labels) and set(labels.tolist()) <= {1, 2}
        assert ((boxes >= 0) & (boxes <= 1)).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()


def test_all_parts_off_is_a_plain_resize():
    t = train_transform(128, photometric=False, expand=False, crop=False, flip=False)
    image, boxes, labels = t(_image(), BOXES, LABELS)
    assert torch.equal(image, resize_image(_image(), 128))
    torch.testing.assert_close(boxes, BOXES / torch.tensor([300.0, 200.0, 300.0, 200.0]))
    assert torch.equal(labels, LABELS)


def test_flip_mirrors_image_and_boxes_exactly():
    t = train_transform(128, photometric=False, expand=False, crop=False, flip=True)
    plain = resize_image(_image(), 128)
    want = BOXES / torch.tensor([300.0, 200.0, 300.0, 200.0])
    seen = set()
    torch.manual_seed(0)
    for _ in range(20):
        image, boxes, _ = t(_image(), BOXES, LABELS)
        if torch.equal(image, plain):
            seen.add("kept")
            torch.testing.assert_close(boxes, want)
        else:
            seen.add("flipped")
            assert torch.equal(image, plain.flip(-1))
            torch.testing.assert_close(boxes[:, [0, 2]], 1 - want[:, [2, 0]])
            torch.testing.assert_close(boxes[:, [1, 3]], want[:, [1, 3]])
    assert seen == {"kept", "flipped"}


def test_same_seed_same_output():
    t = train_transform(128)
    torch.manual_seed(3)
    a = [t(_image(), BOXES, LABELS) for _ in range(5)]
    torch.manual_seed(3)
    b = [t(_image(), BOXES, LABELS) for _ in range(5)]
    for x, y in zip(a, b, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(x, y, strict=True))


def test_images_without_boxes_are_augmented_too():
    t = train_transform(64)
    image, boxes, labels = t(_image(), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert image.shape == (3, 64, 64) and boxes.shape == (0, 4) and len(labels) == 0


def test_expand_zooms_out_so_boxes_shrink():
    t = train_transform(128, photometric=False, expand=True, crop=False, flip=False)
    torch.manual_seed(0)
    widths = [
        t(_image(), BOXES, LABELS)[1][0, 2] - t(_image(), BOXES, LABELS)[1][0, 0] for _ in range(20)
    ]
    assert min(widths) < 0.29  # unexpanded relative width is 90/300 = 0.3


def test_parse_augment():
    assert parse_augment("none") == dict.fromkeys(PARTS, False)
    assert parse_augment("ssd") == dict.fromkeys(PARTS, True)
    assert parse_augment("flip,crop") == {
        "photometric": False,
        "expand": False,
        "crop": True,
        "flip": True,
    }
    with pytest.raises(ValueError, match="unknown part"):
        parse_augment("flip,rotate")


def test_zoom_out_limit_keeps_the_smallest_box_matchable():
    # smallest box 20 x 20 px of a 200 x 200 image: size 0.1; smallest anchor 0.05
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [50.0, 50.0, 150.0, 150.0]])
    z = zoom_out_limit(boxes, 200, 200, min_anchor=0.05)
    assert z == pytest.approx(0.1 / (0.05 * 0.5**0.5))
    # at that zoom the box is 0.1 / z = 0.0354 of the canvas: IoU with a concentric
    # anchor of 0.05 is (0.0354 / 0.05)^2 = 0.5 exactly
    assert ((0.1 / z) / 0.05) ** 2 == pytest.approx(0.5)
    assert zoom_out_limit(boxes, 200, 200, min_anchor=0.2) == 1.0  # already too small
    assert zoom_out_limit(torch.zeros(0, 4), 200, 200, 0.05) == float("inf")


def test_bounded_zoom_out_never_passes_the_bound():
    boxes = torch.tensor([[10.0, 20.0, 40.0, 50.0]])  # 30 x 30 of 300 x 200
    torch.manual_seed(0)
    limit = zoom_out_limit(boxes, 200, 300, min_anchor=0.05)
    for _ in range(30):
        image, out = bounded_zoom_out(_image(), boxes, max_zoom=4.0, min_anchor=0.05)
        h, w = image.shape[-2:]
        assert h / 200 <= limit + 1e-6 and w / 300 <= limit + 1e-6
        size = (((out[0, 2] - out[0, 0]) / w) * ((out[0, 3] - out[0, 1]) / h)).sqrt()
        assert size >= 0.05 * 0.5**0.5 - 1e-3
        # the pasted image still holds its box: the same pixels moved by the offset
        x0, y0 = int(out[0, 0] - 10), int(out[0, 1] - 20)
        assert torch.equal(image[:, y0 : y0 + 200, x0 : x0 + 300], _image())


def test_centre_crop_keeps_boxes_whose_centres_are_inside():
    torch.manual_seed(0)
    small = torch.tensor([[100.0, 100.0, 106.0, 106.0], [280.0, 180.0, 290.0, 190.0]])
    for _ in range(20):
        image, boxes, labels = centre_crop_boxes(_image(), small, LABELS, min_scale=0.5)
        h, w = image.shape[-2:]
        assert 1 <= len(boxes) == len(labels)
        assert (boxes[:, 2:] <= torch.tensor([w, h])).all() and (boxes >= 0).all()
        assert h >= 100 and w >= 150


def test_anchor_bounded_augment_outputs_normalised_boxes():
    t = AnchorBoundedAugment(128, min_anchor=0.05)
    torch.manual_seed(0)
    for _ in range(20):
        image, boxes, labels = t(_image(), BOXES, LABELS)
        assert image.shape == (3, 128, 128) and image.dtype == torch.uint8
        assert len(boxes) == len(labels) >= 1
        assert ((boxes >= 0) & (boxes <= 1)).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()

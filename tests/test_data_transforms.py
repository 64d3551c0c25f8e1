import pytest
import torch

from tinyssd.data.dataset import resize_image
from tinyssd.data.transforms import PARTS, parse_augment, train_transform

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

import numpy as np
import pytest
import torch
from PIL import Image

from tinyssd.images import as_image_list, resize_image, to_tensor


def _pixels(h=4, w=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_one_image_a_list_and_a_4d_batch_become_one_entry_per_image():
    array = _pixels()
    assert len(as_image_list(array)) == 1
    assert len(as_image_list([array, array, array])) == 3
    assert len(as_image_list((array,))) == 1
    assert len(as_image_list(np.stack([array, array]))) == 2  # [B, H, W, 3]
    assert len(as_image_list(torch.zeros(5, 3, 4, 6, dtype=torch.uint8))) == 5  # [B, 3, H, W]


def test_every_kind_of_image_gives_the_same_chw_uint8_tensor(tmp_path):
    array = _pixels()
    Image.fromarray(array).save(tmp_path / "x.png")
    want = torch.from_numpy(array).permute(2, 0, 1)
    for image in (array, want, Image.fromarray(array), tmp_path / "x.png", str(tmp_path / "x.png")):
        got = to_tensor(image)
        assert got.dtype == torch.uint8 and torch.equal(got, want)
    grey = to_tensor(array[..., 0])  # [H, W] grey -> three equal channels
    assert torch.equal(grey, want[:1].expand(3, -1, -1))
    with pytest.raises(TypeError, match="int"):
        to_tensor(3)  # type: ignore[arg-type]


def test_resize_keeps_an_image_of_the_right_size_and_resizes_others():
    image = torch.from_numpy(_pixels(8, 8)).permute(2, 0, 1)
    assert resize_image(image, 8) is image
    small = resize_image(image, 4)
    assert small.shape == (3, 4, 4) and small.dtype == torch.uint8
    flat = torch.full((3, 5, 7), 77, dtype=torch.uint8)
    assert torch.equal(resize_image(flat, 16), torch.full((3, 16, 16), 77, dtype=torch.uint8))

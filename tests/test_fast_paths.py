"""Every fast path gives the plain path's outputs (to tolerance); speed is for bench/."""

import pytest
import torch

from tinyssd.inference import predict_batch
from tinyssd.models import TinySSD
from tinyssd.models.fuse import fold_batchnorm


@pytest.fixture(scope="module")
def trained_ish_model():
    """A TinySSD whose BatchNorm statistics are not the identity."""
    torch.manual_seed(0)
    model = TinySSD(2)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(4, 3, 128, 128) * 255)
    return model.eval()


def _images(n=2, size=128):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def test_folded_batchnorm_gives_the_same_outputs(trained_ish_model):
    folded = fold_batchnorm(trained_ish_model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trained_ish_model.modules())
    with torch.no_grad():
        for a, b in zip(trained_ish_model(_images()), folded(_images()), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_channels_last_gives_the_same_outputs(trained_ish_model):
    cl = fold_batchnorm(trained_ish_model).to(memory_format=torch.channels_last)
    plain = fold_batchnorm(trained_ish_model)
    with torch.no_grad():
        x = _images()
        for a, b in zip(plain(x), cl(x.contiguous(memory_format=torch.channels_last)), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_uint8_input_equals_float_input(trained_ish_model):
    x = _images()
    with torch.no_grad():
        for a, b in zip(trained_ish_model(x), trained_ish_model(x.float()), strict=True):
            assert torch.equal(a, b)


@pytest.mark.skipif(
    not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="CPU without bf16 support"
)
def test_bf16_autocast_forward_is_close_to_fp32(trained_ish_model):
    x = _images()
    with torch.no_grad():
        _, cls32, box32 = trained_ish_model(x)
        with torch.autocast("cpu", torch.bfloat16):
            _, cls16, box16 = trained_ish_model(x)
    p32, p16 = torch.softmax(cls32, -1), torch.softmax(cls16.float(), -1)
    assert (p32 - p16).abs().max() < 0.05
    assert (box32 - box16.float()).abs().mean() < 0.05 * box32.abs().mean()


def test_predict_batch_on_folded_model_matches_plain_model(trained_ish_model):
    x = _images()
    sizes = [(128, 128), (300, 200)]
    plain = predict_batch(trained_ish_model, x, sizes, score_threshold=0.3)
    fast = predict_batch(
        fold_batchnorm(trained_ish_model).to(memory_format=torch.channels_last),
        x.contiguous(memory_format=torch.channels_last),
        sizes,
        score_threshold=0.3,
    )
    assert all(len(d["scores"]) > 0 for d in plain)  # something to compare
    for a, b in zip(plain, fast, strict=True):
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-3)

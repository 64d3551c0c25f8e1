"""models.conv.Conv2d: nn.Conv2d's results, and right gradients on 1-pixel-wide maps in bf16."""

import copy

import pytest
import torch
from torch import nn

from tinyssd.models.conv import Conv2d


def _pair(stride, groups=1, channels=32, seed=0):
    torch.manual_seed(seed)
    ours = Conv2d(channels, channels, 3, stride=stride, padding=1, bias=True, groups=groups)
    plain = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=True, groups=groups)
    plain.load_state_dict(ours.state_dict())
    return ours, plain


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(1, 1), (1, 5), (5, 1), (2, 2), (7, 6)])
def test_same_output_and_state_dict_as_nn_conv2d_in_fp32(stride, hw):
    ours, plain = _pair(stride)
    x = torch.randn(3, 32, *hw)
    assert ours.state_dict().keys() == plain.state_dict().keys()
    torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-5)


def _grad(conv, x, upstream, dtype):
    conv.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16):
        y = conv(x)
    (y.float() * upstream).sum().backward()
    return conv.weight.grad.double()


@pytest.mark.parametrize("hw", [(1, 1), (4, 1), (1, 4)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_weight_gradient_on_a_one_pixel_wide_map_is_right(hw, seed):
    # PyTorch's CPU bf16 stride-2 3x3 conv returns garbage weight gradients here
    ours, _ = _pair(2, channels=96, seed=seed)
    x = torch.randn(8, 96, *hw).relu().contiguous(memory_format=torch.channels_last)
    reference = copy.deepcopy(ours).double()
    upstream = torch.randn(8, 96, (hw[0] + 1) // 2, (hw[1] + 1) // 2)
    want = _grad(reference, x.double(), upstream.double(), None)
    got = _grad(ours, x, upstream, torch.bfloat16)
    assert torch.isfinite(got).all()
    assert (got - want).abs().max() <= 0.02 * want.abs().max()

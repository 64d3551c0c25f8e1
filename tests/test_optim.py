"""Optimisation: parameter groups, optimizers, the schedule's rates, the weight EMA."""

import math

import pytest
import torch
from torch import nn

from tinyssd.engine.optim import (
    ModelEMA,
    build_optimizer,
    lr_at,
    param_groups,
    set_lr,
)


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def test_norm_and_bias_parameters_get_no_weight_decay():
    net = _net()
    decayed, plain = param_groups(net, weight_decay=5e-4)
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decayed["params"]) == {id(net[0].weight), id(net[3].weight)}
    assert ids(plain["params"]) == {
        id(net[0].bias),
        id(net[1].weight),
        id(net[1].bias),
        id(net[3].bias),
    }


def test_frozen_and_shared_parameters_are_grouped_once():
    net = _net()
    net[0].weight.requires_grad_(False)
    shared = nn.Sequential(net, net)  # the same modules twice
    decayed, plain = param_groups(shared, weight_decay=0.1)
    assert len(decayed["params"]) == 1 and len(plain["params"]) == 4


@pytest.mark.parametrize(
    ("name", "kind", "nesterov"),
    [
        ("sgd", torch.optim.SGD, False),
        ("nesterov", torch.optim.SGD, True),
        ("adamw", torch.optim.AdamW, None),
    ],
)
def test_build_optimizer_kinds(name, kind, nesterov):
    opt = build_optimizer(_net(), name, lr=0.01, momentum=0.9, weight_decay=1e-4)
    assert isinstance(opt, kind)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    if nesterov is not None:
        assert opt.param_groups[0]["nesterov"] is nesterov
        assert opt.param_groups[0]["momentum"] == 0.9
    else:
        assert opt.param_groups[0]["betas"] == (0.9, 0.999)


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="adamw"):
        build_optimizer(_net(), "rmsprop")


def test_warmup_then_cosine_rates():
    # total 111, warm-up 10, base 0.1, final 0.01 x base, warm-up from 0.001 x base
    rate = lambda s: lr_at(s, 111, 0.1, warmup=10, final_ratio=0.01)  # noqa: E731
    assert rate(0) == pytest.approx(1e-4)
    assert rate(5) == pytest.approx(0.1 * (0.001 + 0.999 * 0.5))
    assert rate(10) == pytest.approx(0.1)
    # halfway through the cosine part (step 60 of 10..110): the mean of 0.1 and 0.001
    assert rate(60) == pytest.approx(0.0505)
    assert rate(110) == pytest.approx(0.001)
    assert rate(500) == pytest.approx(0.001)  # past the end it stays at the floor


def test_docstring_example():
    assert lr_at(0, 101, 0.1, final_ratio=0.0) == pytest.approx(0.1)
    assert lr_at(50, 101, 0.1, final_ratio=0.0) == pytest.approx(0.05)
    assert lr_at(100, 101, 0.1, final_ratio=0.0) == pytest.approx(0.0, abs=1e-12)


def test_step_and_constant_schedules():
    assert lr_at(66, 100, 1.0, schedule="step") == 1.0
    assert lr_at(67, 100, 1.0, schedule="step") == pytest.approx(0.1)
    assert lr_at(89, 100, 1.0, schedule="step") == pytest.approx(0.01)
    assert lr_at(99, 100, 0.2, schedule="constant") == 0.2
    with pytest.raises(ValueError, match="cosine"):
        lr_at(0, 10, 0.1, schedule="linear")


def test_set_lr_sets_every_group():
    opt = build_optimizer(_net(), "sgd", lr=0.5)
    set_lr(opt, 0.125)
    assert [g["lr"] for g in opt.param_groups] == [0.125, 0.125]


def test_ema_update_by_hand():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEMA(model, decay=0.9, tau=0)  # no ramp: d = 0.9 every update
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)  # 0.9 * 1 + 0.1 * 3 = 1.2
    torch.testing.assert_close(ema.module.weight, torch.tensor([[1.2]]))
    ema.update(model)  # 0.9 * 1.2 + 0.1 * 3 = 1.38
    torch.testing.assert_close(ema.module.weight, torch.tensor([[1.38]]))
    assert ema.updates == 2
    assert not ema.module.weight.requires_grad


def test_ema_ramp_and_buffers():
    model = nn.BatchNorm1d(1)
    ema = ModelEMA(model, decay=0.99, tau=10)
    assert ema.current_decay() == pytest.approx(0.99 * (1 - math.exp(-0.1)))
    with torch.no_grad():
        model.running_mean.fill_(2.0)
    model.num_batches_tracked += 5
    d = ema.current_decay()
    ema.update(model)
    torch.testing.assert_close(ema.module.running_mean, torch.tensor([(1 - d) * 2.0]))
    assert int(ema.module.num_batches_tracked) == 5  # integers are copied, not averaged

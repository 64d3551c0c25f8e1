"""One training step: train_step's arithmetic."""

import torch

from tinyssd.engine.step import train_step
from tinyssd.losses import LossConfig, MultiBoxLoss
from tinyssd.matching import anchor_targets
from tinyssd.models import PRESETS, SSD


def test_a_disabled_grad_scaler_takes_the_plain_optimiser_step():
    torch.manual_seed(0)
    images = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    labels = torch.tensor([[[1, 0.1, 0.1, 0.6, 0.7]], [[1, 0.3, 0.2, 0.9, 0.8]]])
    config = PRESETS["tiny_ssd"]()
    weights = SSD(1, config).state_dict()
    out = []
    for scaler in (torch.amp.GradScaler("cpu", enabled=False), "manual"):
        model = SSD(1, config)
        model.load_state_dict(weights)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loss_fn = MultiBoxLoss(LossConfig.parse("chapter"))
        if scaler == "manual":  # the same layout as train_step's, so the same kernels
            anchors, cls_logits, box_deltas = model(
                images.contiguous(memory_format=torch.channels_last)
            )
            box_targets, box_mask, cls_targets = anchor_targets(anchors, labels)
            losses = loss_fn(cls_logits, cls_targets, box_deltas, box_targets, box_mask, anchors)
            losses["loss"].backward()
            optimizer.step()
        else:
            train_step(model, loss_fn, optimizer, images, labels, scaler=scaler)
        out.append(model.state_dict())
    for name, value in out[0].items():  # same arithmetic, same layout: bit for bit
        torch.testing.assert_close(value, out[1][name], rtol=0, atol=0)

"""Evaluation: deterministic logits in eval mode, the caller's mode kept."""

from __future__ import annotations

import pytest
import torch

from sdprune.data.images import ImageSet, normalize
from sdprune.nets.registry import create_model
from sdprune.train.evaluate import predict


def test_predict_evaluates_in_eval_mode_and_keeps_the_callers_mode_even_on_error():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=3, in_channels=1).train()
    data = ImageSet(torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8), torch.zeros(5, dtype=torch.long))
    logits = predict(model, data, [0.5], [0.25], batch_size=2)
    assert model.training
    with torch.no_grad():
        expected = model.eval()(normalize(data.images, [0.5], [0.25]))
    assert torch.allclose(logits, expected, atol=1e-6)  # eval mode: batches of 2 = one batch of 5
    model.train()
    wrong = ImageSet(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(RuntimeError):
        predict(model, wrong, [0.5] * 3, [0.25] * 3)  # three channels into a one-channel net
    assert model.training

"""Survival schedules written onto a model: a refusal leaves the model as it was."""

from __future__ import annotations

import pytest
import torch

from sdprune.depth.schedule import get_survival, set_survival
from sdprune.errors import SdpruneError
from sdprune.nets.registry import create_model


def test_a_refused_survival_zero_changes_no_block():
    """Survival 0 on the last block is refused before blocks 0..7 are refolded."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SdpruneError, match="survival 0 for stages.2.2 closes it"):
        set_survival(model, [0.5] * 8 + [0.0], keep_function=True)
    assert get_survival(model) == [1.0] * 9
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_closed_block_may_stay_closed():
    """A block already at survival 0 kept at 0 is no refusal: nothing moves."""
    model = create_model("resnet20", num_classes=10).eval()
    set_survival(model, [1.0] * 8 + [0.0])
    set_survival(model, [0.5] * 8 + [0.0], keep_function=True)
    assert get_survival(model) == [0.5] * 8 + [0.0]

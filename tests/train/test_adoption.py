"""What an adopted run records about how its weights were trained (config ``survival``)."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm

from sdprune.depth.schedule import get_survival
from sdprune.errors import SdpruneError
from sdprune.train.adopt import adopt
from sdprune.train.config import TrainConfig


@pytest.mark.parametrize("arch,recorded", [("resnet18", "none"), ("efficientnet_b0", "prior")])
def test_a_state_dict_records_none_only_when_every_survival_is_one(tmp_path, arch, recorded):
    """ResNet-18 trained plainly: "none"; EfficientNet-B0 keeps its drop rates: "prior"."""
    torch.manual_seed(0)
    path = tmp_path / f"{arch}.pth"
    torch.save(getattr(tvm, arch)(weights=None, num_classes=10).state_dict(), path)
    adopted = adopt(path, None, 10, 3)
    survival = get_survival(adopted.model)
    assert adopted.source["survival"] == recorded
    assert (min(survival) == 1.0) == (recorded == "none")
    if recorded == "prior":  # the 15th of 16 MBConvs is the last with a residual: drop rate 0.2 * 14/16
        assert min(survival) == pytest.approx(1 - 0.2 * 14 / 16)


def test_prior_is_a_record_of_an_adopted_run_never_a_schedule_to_train_with():
    assert TrainConfig(init="w.pth", epochs=0, survival="prior").survival == "prior"
    with pytest.raises(SdpruneError, match="^--survival must be one of linear, uniform, none, learned, got 'prior'$"):
        TrainConfig(init="w.pth", epochs=1, survival="prior")

"""gate_residual_blocks: a model someone built becomes one sdprune can train and prune."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn
from torchvision.models.resnet import BasicBlock

from sdprune.depth.block import GatedBlock
from sdprune.depth.gates import GateSampler
from sdprune.depth.schedule import set_survival
from sdprune.depth.structure import block_names, gated_blocks, remove_blocks
from sdprune.errors import SdpruneError
from sdprune.nets import gate_residual_blocks


def eval_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("build,blocks", [(tvm.resnet18, 8), (tvm.mobilenet_v3_small, 6)])
def test_wrapping_keeps_the_logits_and_the_result_can_be_pruned(build, blocks):
    torch.manual_seed(0)
    model = build(weights=None, num_classes=10)
    with torch.no_grad():  # BatchNorms that are not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.normal_(0, 0.1)
    x = torch.randn(2, 3, 64, 64)
    before = eval_logits(model, x)
    params = sum(p.numel() for p in model.parameters())
    assert gate_residual_blocks(model) is model  # in place
    assert len(gated_blocks(model)) == blocks
    assert sum(p.numel() for p in model.parameters()) == params  # the same layers, nothing new
    torch.testing.assert_close(eval_logits(model, x), before, atol=1e-5, rtol=0)
    assert len(gated_blocks(gate_residual_blocks(model))) == blocks  # a second call changes nothing
    # it trains with stochastic depth: a dropped block gets no gradient
    set_survival(model, [0.5] * blocks)
    with GateSampler(model.train(), "batch", seed=1).install(step=0, batch_size=2) as gates:
        F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    dropped = [b for (_, b), g in zip(gated_blocks(model), gates.tolist()) if g == 0.0]
    assert dropped and all(p.grad is None for b in dropped for p in b.branch.parameters())
    names = block_names(model)
    remove_blocks(model, names[1::2])
    assert block_names(model) == names[::2]
    assert eval_logits(model, x).shape == (2, 10)


def test_a_model_without_residual_blocks_is_refused():
    with pytest.raises(SdpruneError, match="no residual block to gate in this Sequential"):
        gate_residual_blocks(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()))
    with pytest.raises(SdpruneError, match="no residual block to gate in this SqueezeNet"):
        gate_residual_blocks(tvm.squeezenet1_1(weights=None))


def test_a_block_that_computes_something_else_is_refused():
    class Scaled(BasicBlock):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(Scaled(8, 8), BasicBlock(8, 8))
    with pytest.raises(SdpruneError, match="Scaled subclasses torchvision's BasicBlock but overrides forward"):
        gate_residual_blocks(model)


def test_subclasses_that_keep_the_forward_are_wrapped():
    class Tagged(BasicBlock):
        pass

    model = gate_residual_blocks(nn.Sequential(Tagged(8, 8)))
    assert isinstance(model[0], GatedBlock)

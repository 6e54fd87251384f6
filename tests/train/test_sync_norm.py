"""CrossRankBatchNorm: BatchNorm over every rank's rows, for backends PyTorch's SyncBatchNorm refuses.

In one process (a gloo group of one) it must be BatchNorm exactly: output, gradients and
running statistics. The 2-process equality with one process is tested through torchrun in
test_distributed.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from sdprune.nets.registry import create_model
from sdprune.train.sync_norm import CrossRankBatchNorm, convert_cross_rank_bn


@pytest.fixture
def group_of_one(tmp_path):
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("momentum", [0.1, None])
def test_in_a_group_of_one_it_is_batchnorm(group_of_one, momentum):
    reference = nn.BatchNorm2d(5, momentum=momentum)
    nn.init.uniform_(reference.weight, 0.5, 1.5)
    nn.init.uniform_(reference.bias, -0.5, 0.5)
    synced = convert_cross_rank_bn(copy.deepcopy(reference))
    assert type(synced) is CrossRankBatchNorm
    for step in range(3):
        x = (torch.randn(6, 5, 4, 3, generator=torch.Generator().manual_seed(step)) * 3 + 2).requires_grad_()
        xs = x.detach().clone().requires_grad_()
        upstream = torch.randn(6, 5, 4, 3, generator=torch.Generator().manual_seed(10 + step))
        out, out_s = reference(x), synced(xs)
        (out * upstream).sum().backward()
        (out_s * upstream).sum().backward()
        torch.testing.assert_close(out_s, out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(xs.grad, x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(synced.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(synced.bias.grad, reference.bias.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(synced.running_mean, reference.running_mean)
    torch.testing.assert_close(synced.running_var, reference.running_var)
    assert int(synced.num_batches_tracked) == int(reference.num_batches_tracked) == 3


def test_conversion_keeps_the_state_dict_and_shares_the_parameters():
    model = create_model("resnet20", num_classes=10, in_channels=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model.stem[1].weight
    convert_cross_rank_bn(model)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(isinstance(m, CrossRankBatchNorm) for m in norms)
    assert model.stem[1].weight is weight
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_outside_a_process_group_and_in_eval_it_is_plain_batchnorm():
    reference = nn.BatchNorm2d(3)
    synced = convert_cross_rank_bn(copy.deepcopy(reference))
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(synced(x), reference(x))  # no group: BatchNorm's own kernel
    synced.eval(), reference.eval()
    torch.testing.assert_close(synced(x), reference(x))

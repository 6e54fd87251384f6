"""BatchNorm whose training statistics pool every rank's images (``--sync-bn``).

On GPUs ``--sync-bn`` uses PyTorch's SyncBatchNorm (fused CUDA kernels). PyTorch refuses
SyncBatchNorm on the CPU, so gloo runs (and the test that a 2-process ``--sync-bn`` run
equals the 1-process run at the same global batch) use ``sync_batch_norm`` below: the same
arithmetic as BatchNorm over the union of the ranks' rows, with the two sums all-reduced
through PyTorch's differentiable functional all-reduce (the one its deprecation of
``torch.distributed.nn.functional`` points to), whose backward all-reduces the gradient:
exactly the gradient of the global batch's statistics.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import Tensor, nn


def sync_batch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
                    running_var: Tensor | None, momentum: float, eps: float) -> Tensor:
    """Training-mode batch norm of (N, C, ...) ``x`` with statistics over every rank's rows.

    Two passes (mean, then centred squares) rather than E[x^2] - E[x]^2, so the variance
    carries no cancellation error and matches one process's BatchNorm to float tolerance.
    ``running_mean`` / ``running_var`` are updated in place with the unbiased variance, as
    BatchNorm does; ``momentum`` is the weight of this batch.
    """
    dims = [0, *range(2, x.dim())]
    shape = (1, -1, *([1] * (x.dim() - 2)))
    data = x.float()  # bf16 autocast: statistics in float32, as BatchNorm computes them
    count = torch.tensor([float(data.numel() // data.shape[1])], dtype=data.dtype, device=data.device)
    totals = funcol.all_reduce(torch.cat([data.sum(dims), count]), "sum", dist.group.WORLD)
    n = totals[-1]
    mean = totals[:-1] / n
    centred = data - mean.view(shape)
    var = funcol.all_reduce(centred.square().sum(dims), "sum", dist.group.WORLD) / n
    out = centred * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        out = out * weight.view(shape) + bias.view(shape)
    if running_mean is not None:
        with torch.no_grad():
            unbiased = var * (n / (n - 1)) if n > 1 else var
            running_mean.lerp_(mean.detach().to(running_mean.dtype), momentum)
            running_var.lerp_(unbiased.detach().to(running_var.dtype), momentum)
    return out.to(x.dtype)


class CrossRankBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that, in training under a process group, normalises over every rank's rows.

    A subclass, so its state-dict keys, eval behaviour and everything that looks for
    BatchNorm (healing, export) are unchanged.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        self._check_input_dim(x)
        momentum = self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative moving average, as BatchNorm's momentum=None
                momentum = 1.0 / float(self.num_batches_tracked)
        stats = self.track_running_stats and self.running_mean is not None
        return sync_batch_norm(x, self.weight, self.bias, self.running_mean if stats else None,
                               self.running_var if stats else None, momentum, self.eps)


def convert_cross_rank_bn(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d of ``module`` as a CrossRankBatchNorm sharing its parameters and buffers."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CrossRankBatchNorm):
        converted = CrossRankBatchNorm(module.num_features, module.eps, module.momentum,
                                       module.affine, module.track_running_stats)
        converted.weight, converted.bias = module.weight, module.bias
        converted.running_mean, converted.running_var = module.running_mean, module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in list(module.named_children()):
        converted = convert_cross_rank_bn(child)
        if converted is not child:
            setattr(module, name, converted)
    return module

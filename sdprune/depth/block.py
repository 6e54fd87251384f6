"""The gated residual block: y = act(shortcut(x) + g * branch(x)).

Scaling follows the paper (Huang et al. 2016): in training the gate g is 0 or 1 (batch
mode) or a 0/1 mask per sample (row mode), never rescaled; in eval mode g = survival, the
block's survival probability, so the branch contributes its expected value. We chose the
paper's rule over the inverted one (branch / p in training) because learned survival can
drive p towards 0: the paper's rule then makes the evaluated block converge to the pruned
block (act(shortcut(x))), while the inverted rule would divide by a vanishing p.

Eval, the pruned network and the exported ONNX graph all compute exactly
act(shortcut(x) + survival * branch(x)); removed blocks compute act(shortcut(x)).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# What a block's branch is multiplied by for one forward (see GatedBlock): None (the
# default of the mode), a Python float (a host decision: 0.0 skips the branch) or a tensor.
Gate = float | Tensor | None

# Layers whose weight and bias, multiplied by a constant, scale their output by it.
_SCALE_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.Linear, nn.Conv2d)


class GatedBlock(nn.Module):
    """A residual block whose branch can be skipped (batch mode) or masked (row mode).

    What the branch contributes is decided by the block's gate, which callers install
    for the duration of one forward through ``sdprune.depth.gates.gating`` (never by
    setting attributes by hand), so no gate outlives the forward it was drawn for:

      * no gate (the default): in training every branch runs unscaled (plain training);
        in eval the branch is scaled by ``survival``, its expected contribution;
      * a Python float: 0.0 skips the branch (no forward, no backward, no parameter
        gradient: batch-mode stochastic depth, and block removal in the statistics);
        1.0 runs it unscaled;
      * a tensor: the branch is multiplied by it, a scalar (``survival`` itself: the
        evaluated function in train mode, for healing) or a per-sample (N,) 0/1 mask
        (row mode; the branch is always computed).

    ``replay`` is the statistics' shared-prefix shortcut: when a cached output is
    installed the block returns it without computing anything.
    """

    def __init__(self, branch: nn.Module, shortcut: nn.Module | None = None,
                 act: nn.Module | None = None) -> None:
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()
        # Survival probability p_l: the eval-time scale of the branch. A buffer, so it
        # travels with the state dict into checkpoints and the exported graph.
        self.register_buffer("survival", torch.ones(()))
        self.gate: Gate = None
        self.replay: Tensor | None = None
        # The keys (relative to the block) whose product with a constant scales the branch's
        # output: where adoption folds a prior survival and a kept function folds a change of
        # survival (``fold_keys``). Set by whoever knows the block (its adapter); None: the
        # weight and bias of the branch's last layer (``output_scale``).
        self.fold: tuple[str, ...] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.replay is not None:
            return self.replay
        gate = self.gate
        if gate is None:
            if self.training:  # plain training: every branch runs, unscaled
                return self.act(self.shortcut(x) + self.branch(x))
            gate = self.survival  # eval: the branch's expected contribution
        if isinstance(gate, float):  # batch mode: one draw for the whole batch
            if gate == 0.0:  # dropped: the branch is not executed at all
                return self.act(self.shortcut(x))
            branch = self.branch(x)
            return self.act(self.shortcut(x) + (branch if gate == 1.0 else branch * gate))
        if gate.dim() == 0:  # a scale (survival)
            return self.act(self.shortcut(x) + self.branch(x) * gate)
        # row mode: a per-sample 0/1 mask; the branch is computed for every sample
        if gate.shape != x.shape[:1]:  # a wrong length would broadcast or fail deep in autograd
            raise ValueError(f"a row-mode gate of shape {tuple(gate.shape)} for a batch of {x.shape[0]}")
        mask = gate.to(dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return self.act(self.shortcut(x) + self.branch(x) * mask)


    def fold_keys(self) -> tuple[str, ...]:
        """The state-dict keys (relative to the block) that scale the branch's output."""
        return self.fold if self.fold is not None else output_scale(self)


def output_scale(block: GatedBlock) -> tuple[str, ...]:
    """The default fold: the weight and bias of the branch's last layer (a BatchNorm, a
    Linear or a convolution with a bias), whose product with a constant scales the branch's
    output by it. Names are relative to the block ("branch.4.weight", ...)."""
    name, last = list(block.branch.named_modules())[-1]
    if not isinstance(last, _SCALE_LAYERS) or last.bias is None:
        raise TypeError(f"the branch ends in a {type(last).__name__}: its adapter must name its fold")
    prefix = f"branch.{name}" if name else "branch"
    return (f"{prefix}.weight", f"{prefix}.bias")


class PrunedBlock(nn.Module):
    """What remains of a removed block: act(shortcut(x)) (the branch is gone)."""

    def __init__(self, shortcut: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.shortcut(x))



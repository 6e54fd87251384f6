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


class GatedBlock(nn.Module):
    """A residual block whose branch can be skipped (batch mode) or masked (row mode).

    The trainer sets ``gate`` before each training forward:
      * ``None``: the branch always runs (plain training, and eval),
      * a Python float 0.0 or 1.0: one draw for the whole batch; 0.0 skips the branch,
        so it costs no forward, no backward and gets no parameter gradient,
      * a tensor of shape (N,): a per-sample 0/1 mask (row mode, computes the branch).
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
        self.gate: float | Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:  # deterministic: the branch's expected contribution
            return self.act(self.shortcut(x) + self.branch(x) * self.survival)
        gate = self.gate
        if gate is None:  # plain training: every branch runs, unscaled
            return self.act(self.shortcut(x) + self.branch(x))
        if isinstance(gate, Tensor):  # row mode: per-sample mask, branch always computed
            mask = gate.to(dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
            return self.act(self.shortcut(x) + self.branch(x) * mask)
        if gate == 0.0:  # batch mode, dropped: the branch is not executed at all
            return self.act(self.shortcut(x))
        return self.act(self.shortcut(x) + self.branch(x))


class PrunedBlock(nn.Module):
    """What remains of a removed block: act(shortcut(x)) (the branch is gone)."""

    def __init__(self, shortcut: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.shortcut(x))



"""Survival schedules and gate sampling.

Functional core (``survival_schedule``, ``sample_gates``) with a thin stateful wrapper
(``GateSampler``) that the training loop owns. Every random draw of every gate comes from
one ``torch.Generator`` re-seeded from (seed, step), so a resumed run, or every rank of a
distributed run, draws exactly the same gates at the same step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sdprune.depth.block import GatedBlock
from sdprune.depth.structure import gated_blocks
from sdprune.errors import SdpruneError

DROP_MODES = ("batch", "row")


def step_seed(seed: int, step: int) -> int:
    """A 63-bit seed for (seed, step): splitmix64, so neighbouring steps are unrelated."""
    z = (seed * 0x9E3779B97F4A7C15 + step + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def sample_gates(survival: Tensor, mode: str, generator: torch.Generator,
                 batch_size: int = 1) -> Tensor:
    """Draw Bernoulli(survival) gates on the CPU: shape (L,) in batch mode, (L, N) in row mode."""
    if mode == "batch":
        return (torch.rand(survival.shape, generator=generator) < survival).float()
    if mode == "row":
        u = torch.rand((survival.numel(), batch_size), generator=generator)
        return (u < survival.view(-1, 1)).float()
    raise SdpruneError(f"unknown drop mode {mode!r}; choose from {', '.join(DROP_MODES)}")


class GateSampler:
    """Draws and installs the gates of one training step.

    ``apply(step, batch_size)`` returns the gates it installed (CPU tensor) so the caller
    can log executed blocks or feed learned survival; ``clear()`` removes them.
    """

    def __init__(self, model: nn.Module, mode: str = "batch", seed: int = 0) -> None:
        if mode not in DROP_MODES:
            raise SdpruneError(f"unknown drop mode {mode!r}; choose from {', '.join(DROP_MODES)}")
        self.blocks: list[GatedBlock] = [b for _, b in gated_blocks(model)]
        self.mode = mode
        self.seed = seed
        self.generator = torch.Generator(device="cpu")
        self._survival = self._read()

    def _read(self) -> Tensor:
        return torch.tensor([float(b.survival) for b in self.blocks]) if self.blocks else torch.zeros(0)

    def survival(self) -> Tensor:
        """The survival probabilities gates are drawn from (a CPU copy: no device sync per step)."""
        return self._survival

    def refresh(self, survival: Tensor | None = None) -> None:
        """Take new survival probabilities (given, or read back from the blocks' buffers)."""
        self._survival = survival.detach().float().cpu().clone() if survival is not None else self._read()

    def apply(self, step: int, batch_size: int, device: torch.device | str = "cpu") -> Tensor:
        survival = self.survival()
        if len(self.blocks) == 0 or bool((survival >= 1.0).all()):
            self.clear()  # plain training: no draw, every branch runs
            return torch.ones(len(self.blocks))
        self.generator.manual_seed(step_seed(self.seed, step))
        gates = sample_gates(survival, self.mode, self.generator, batch_size)
        if self.mode == "batch":
            for block, g in zip(self.blocks, gates.tolist()):
                block.gate = g
        else:
            on_device = gates.to(device, non_blocking=True)
            for i, block in enumerate(self.blocks):
                block.gate = on_device[i]
        return gates

    def clear(self) -> None:
        for block in self.blocks:
            block.gate = None

"""Gates: drawing them, and installing them on a network for the span of one forward.

Functional core (``sample_gates``, ``gating``) with a thin stateful wrapper
(``GateSampler``) that the training loop owns. Every random draw of every gate comes from
one ``torch.Generator`` re-seeded from (seed, step), so a resumed run, or every rank of a
distributed run, draws exactly the same gates at the same step.

Gates live on the blocks only inside a ``with gating(...)`` scope: the training step
installs its draw for its forward, healing installs the survival scales (the evaluated
function) while BatchNorm trains, the statistics install a removed block and the cached
outputs of the blocks before it. Nobody patches a module, and nothing leaks from one
forward into the next. Backward needs no gates: a skipped branch is simply not in the
graph, and a row-mode mask is captured in it.
"""

from __future__ import annotations

from contextlib import contextmanager
from numbers import Real
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from sdprune.choices import DROP_MODES
from sdprune.depth.block import Gate, GatedBlock
from sdprune.depth.structure import gated_blocks
from sdprune.errors import SdpruneError


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


@contextmanager
def gating(blocks: Sequence[GatedBlock], gates: Sequence[Gate | int] | None = None,
           replay: Sequence[Tensor | None] | None = None) -> Iterator[None]:
    """Install one gate (and optionally a cached output) per block for the scope's duration.

    ``gates[i]`` is block i's gate (see ``GatedBlock``; a Python number is taken as a
    float, so 0 skips like 0.0); ``replay[i]``, when not None, is an output block i returns
    without computing. On exit, error or not, every block gets back what it had on entry,
    so scopes nest (``expected_gates`` inside a training step's gates, say).
    """
    blocks = list(blocks)
    for name, values in (("gates", gates), ("replay", replay)):
        if values is not None and len(values) != len(blocks):
            raise ValueError(f"{len(values)} {name} for {len(blocks)} blocks")
    saved = [(block.gate, block.replay) for block in blocks]
    try:
        for i, block in enumerate(blocks):
            gate = gates[i] if gates is not None else None
            block.gate = float(gate) if isinstance(gate, Real) else gate
            block.replay = replay[i] if replay is not None else None
        yield
    finally:
        for block, (gate, cached) in zip(blocks, saved):
            block.gate, block.replay = gate, cached


@contextmanager
def expected_gates(model: nn.Module) -> Iterator[None]:
    """Every block computes act(shortcut(x) + survival * branch(x)), even in train mode.

    Healing trains BatchNorm statistics (and fine-tunes) on exactly the function that is
    evaluated and exported, rather than on the stochastic training-time one.
    """
    blocks = [b for _, b in gated_blocks(model)]
    with gating(blocks, [b.survival for b in blocks]):
        yield


class GateSampler:
    """Draws the gates of one training step and installs them for its forward.

    ``with sampler.install(step, batch_size) as gates: loss = ...(model(x))``;
    ``gates`` (a CPU tensor: (L,) in batch mode, (L, N) in row mode) lets the caller count
    executed blocks or feed learned survival. ``draw`` alone gives the same gates without
    installing them.
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

    def plain(self) -> bool:
        """Every survival is 1: nothing to draw, every branch runs (the baseline)."""
        return len(self.blocks) == 0 or bool((self.survival() >= 1.0).all())

    def draw(self, step: int, batch_size: int) -> Tensor:
        """The gates of ``step``, a function of (seed, step) alone (all ones when plain)."""
        if self.plain():
            return torch.ones(len(self.blocks)) if self.mode == "batch" else torch.ones(len(self.blocks), batch_size)
        self.generator.manual_seed(step_seed(self.seed, step))
        return sample_gates(self.survival(), self.mode, self.generator, batch_size)

    @contextmanager
    def install(self, step: int, batch_size: int, rows: slice | None = None) -> Iterator[Tensor]:
        """Draw the gates of ``step`` and install them on the blocks for the scope.

        Row-mode masks go to the blocks' own device (one copy for all blocks). ``rows``:
        the forward sees only these rows of the ``batch_size`` drawn for (one rank's part of
        a distributed batch); the scope still yields the whole draw.
        """
        gates = self.draw(step, batch_size)
        if self.plain():  # no gate at all: plain training, the cheapest path
            yield gates
            return
        if self.mode == "batch":
            per_block: list[Gate] = gates.tolist()  # Python floats: the skip is a host decision
        else:
            device = self.blocks[0].survival.device
            mine = gates if rows is None else gates[:, rows]
            per_block = list(mine.to(device, non_blocking=True).unbind(0))
        with gating(self.blocks, per_block):
            yield gates

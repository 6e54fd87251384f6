"""Stochastic depth itself: the gated residual block, the structure of a gated network,
survival schedules, the gate sampler, block selection and learned survival.

The lowest layer of sdprune: it knows nothing of architectures, data, training or files.
"""

from sdprune.depth.block import GatedBlock, PrunedBlock
from sdprune.depth.structure import block_layout, block_names, gated_blocks, remove_blocks

__all__ = ["GatedBlock", "PrunedBlock", "block_layout", "block_names", "gated_blocks", "remove_blocks"]

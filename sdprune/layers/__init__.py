"""Building blocks shared by every architecture (one idea per file)."""

from sdprune.layers.gated_block import GatedBlock, PrunedBlock, gated_blocks

__all__ = ["GatedBlock", "PrunedBlock", "gated_blocks"]

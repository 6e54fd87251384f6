"""Training: the config, one optimisation step (``Trainer``), the loop, checkpoints, runs
on disk and evaluation.

The public names are imported on first use (PEP 562): the command line reads
``sdprune.train.config`` to build its options, and that must not load torch.
"""

from __future__ import annotations

import importlib

_PUBLIC = {"TrainConfig": "config", "train": "loop", "Trainer": "trainer", "build_training": "trainer"}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)

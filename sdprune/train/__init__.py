"""Training: the config, one optimisation step (``Trainer``), the loop, checkpoints, runs
on disk and evaluation.

The public names are imported on first use (PEP 562): the command line reads
``sdprune.train.config`` to build its options, and that must not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from sdprune.train.config import TrainConfig
    from sdprune.train.loop import train
    from sdprune.train.trainer import Trainer, build_training

_PUBLIC = {"TrainConfig": "config", "train": "loop", "Trainer": "trainer", "build_training": "trainer"}
__all__ = ["TrainConfig", "Trainer", "build_training", "train"]  # a literal, as linters read it: _PUBLIC's keys


def __getattr__(name: str) -> Any:
    """A public name, imported from its module the first time it is asked for."""
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))

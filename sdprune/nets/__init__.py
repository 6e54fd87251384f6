"""Architectures, registered through one builder (``create_model``).

Every registered network exposes its prunable units as ``GatedBlock`` modules, so
statistics, pruning and export never need to know which architecture they hold. The
model modules register themselves when this package is imported.
"""

from sdprune.nets import cifar_resnet, torchvision_nets  # noqa: F401  (registration)
from sdprune.nets.registry import ModelInfo, create_model, describe_model, list_models, model_info

__all__ = ["ModelInfo", "create_model", "describe_model", "list_models", "model_info"]

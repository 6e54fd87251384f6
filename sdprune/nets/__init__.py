"""Architectures, registered through one builder (``create_model``).

Every registered network exposes its prunable units as ``GatedBlock`` modules, so
statistics, pruning and export never need to know which architecture they hold.

The model modules register themselves when this package is imported: a deliberate
exception to "no work at import time", as in timm and torchvision's model registries, so
that a new architecture is one decorated builder and nothing else, and a new torchvision
family one adapter module (``tv_<family>.py``: its block wrappers and its variants; see
``sdprune.nets.torchvision_nets``) added to the import below. Registration only records
builders: no model is built at import.
"""

from sdprune.nets import (cifar_resnet, tv_convnext, tv_efficientnet, tv_maxvit, tv_mobilenet,  # noqa: F401
                          tv_regnet, tv_resnet, tv_swin, tv_vit)  # (registration)
from sdprune.nets.convert import adopt_weights, adoptable, detect_arch, from_gated, to_gated
from sdprune.nets.registry import ModelInfo, create_model, describe_model, list_models, model_info
from sdprune.nets.weights_file import load_state_dict_file
from sdprune.nets.wrap import gate_residual_blocks

__all__ = ["ModelInfo", "adopt_weights", "adoptable", "create_model", "describe_model", "detect_arch", "from_gated",
           "gate_residual_blocks", "list_models", "load_state_dict_file", "model_info", "to_gated"]

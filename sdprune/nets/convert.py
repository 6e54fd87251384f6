"""Adopt torchvision's weights: convert them to the gated layout and back, read them from
the files people save, and load them into sdprune's network.

The key layouts themselves are read off the modules (``sdprune.nets.layout``). Weights
are only ever read with ``torch.load(weights_only=True)``: a file holding pickled code (a
whole saved ``nn.Module``) is refused, never executed.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sdprune.errors import SdpruneError
from sdprune.files import load_weights
from sdprune.nets.layout import (
    StateDict,
    check_torchvision_keys,
    detect_torchvision_arch,
    key_mismatch,
    layout,
    looks_gated,
    model_name,
    shape_mismatch,
)
from sdprune.nets.registry import create_model
from sdprune.nets.torchvision_nets import TORCHVISION_ARCHS

__all__ = ["adapt_input_conv", "adopt_torchvision", "detect_torchvision_arch", "gated_to_torchvision",
           "load_state_dict_file", "torchvision_to_gated"]


def torchvision_to_gated(state_dict: StateDict, arch: str) -> dict[str, Tensor]:
    """torchvision's keys -> the gated network's, with a survival of 1.0 for every block
    (the gated network then computes exactly torchvision's function). Tensors are shared,
    not copied; the keys must be exactly the architecture's."""
    lay = check_torchvision_keys(state_dict, arch)
    from_gated = {g: t for t, g in lay.to_gated.items()}
    out: dict[str, Tensor] = {}
    for key in lay.gated_keys:
        tv_key = from_gated.get(key)
        if tv_key is None:
            out[key] = torch.ones(())  # a survival buffer
        elif tv_key in state_dict:  # only an optional key may be absent
            out[key] = state_dict[tv_key]
    return out


def gated_to_torchvision(state_dict: StateDict, arch: str) -> dict[str, Tensor]:
    """The gated network's keys -> torchvision's. A block's survival p != 1 is folded into
    its branch's last BatchNorm (weight and bias scaled by p), so torchvision's network
    computes in eval what the gated one does. A network with removed blocks has no
    torchvision equivalent and is refused."""
    lay = layout(arch)
    if not looks_gated(state_dict):
        raise SdpruneError("these weights are not in sdprune's gated layout (torchvision's already?)")
    removed = [b.name for b in lay.blocks if b.survival not in state_dict
               and not any(k.startswith(f"{b.name}.branch.") for k in state_dict)]
    if removed:
        raise SdpruneError(f"{len(removed)} of {lay.name}'s blocks were removed (e.g. {removed[0]}): "
                           "a pruned network has no torchvision equivalent")
    problem = key_mismatch(state_dict, lay.gated_keys)
    if problem is not None:
        raise SdpruneError(f"weights do not fit the gated {lay.name}: {problem}")
    out = {k: state_dict[g] for k, g in lay.to_gated.items() if g in state_dict}
    for block in lay.blocks:
        p = float(state_dict[block.survival])
        if p != 1.0:
            for key in block.fold:
                out[key] = out[key] * p
    return out


def _is_state_dict(obj: object) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()))


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict in a weights file, read without unpickling any code.

    Accepts what ``torch.save(model.state_dict(), f)`` writes and what torchvision's
    weights API caches, or a dict wrapping one under "state_dict" or "model" (as training
    scripts save it); a "module." (DataParallel) or "_orig_mod." (torch.compile) prefix on
    every key is dropped. Anything else is a one-line SdpruneError.
    """
    path = Path(path)
    if not path.is_file():
        raise SdpruneError(f"weights file {path} not found")
    try:
        obj = load_weights(path)
    except pickle.UnpicklingError as err:  # weights_only met something that is not a tensor
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(err))
        if found:
            raise SdpruneError(f"{path} holds pickled Python objects ({found.group(1)}: a whole saved model?), "
                               "not a state dict; sdprune never unpickles code: save model.state_dict() "
                               "instead") from None
        raise SdpruneError(f"{path} is not a PyTorch weights file") from None
    except Exception as err:  # noqa: BLE001  (not a torch file at all, truncated, ...: torch raises anything)
        raise SdpruneError(f"{path} is not a PyTorch weights file ({type(err).__name__})") from None
    return state_dict_from(obj, path)


def state_dict_from(obj: object, path: str | os.PathLike) -> dict[str, Tensor]:
    """``load_state_dict_file``'s unwrapping and checks on an object already read from ``path``."""
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        obj = next((obj[k] for k in ("state_dict", "model") if _is_state_dict(obj.get(k))), obj)
    if not _is_state_dict(obj):
        raise SdpruneError(f"{path} holds {_describe(obj)}, not a state dict (a dict of tensors, "
                           "as model.state_dict() gives)")
    state = dict(obj)
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _describe(obj: object) -> str:
    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}"
    if not obj:
        return "an empty dict"
    key, value = next((k, v) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, Tensor)))
    return f"a dict with non-tensor entries (e.g. {key!r}: {type(value).__name__})"


def adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    """A first-convolution weight (out, c, kh, kw) for ``in_channels`` inputs, as timm's
    ``adapt_input_conv`` makes it: summed over c for one channel (a grey image then gives
    exactly what the original gives for that grey image copied to every channel), else
    repeated over the new channels and rescaled by c / in_channels."""
    c = weight.shape[1]
    if in_channels == c:
        return weight
    w = weight.float()
    if in_channels == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        w = w.repeat(1, math.ceil(in_channels / c), 1, 1)[:, :in_channels] * (c / in_channels)
    return w.to(weight.dtype)


def adopt_torchvision(weights: StateDict | str | os.PathLike, arch: str | None,
                      num_classes: int | None = None, in_channels: int = 3,
                      **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """sdprune's gated network with torchvision's trained weights: before any training it
    computes exactly what torchvision's network with those weights computes.

    ``weights``: a torchvision state dict or a file holding one (``load_state_dict_file``).
    ``arch``: sdprune's or torchvision's name ("tv_resnet18" or "resnet18"; None: recognised
    from the weights). ``num_classes`` other than the weights' (None: the weights') keeps
    the backbone and gives the network a fresh head; ``in_channels`` other than the weights'
    adapts the first convolution (``adapt_input_conv``). ``kwargs`` go to the builder.
    Weights of another architecture, or missing, unexpected or mis-shaped tensors, are a
    one-line SdpruneError. Returns the model (in training mode, as built) and what was
    done, JSON-able: arch, new_head, weights_classes, num_classes, input_conv
    ("kept", "summed" or "repeated"), weights_in_channels, in_channels.
    """
    state = weights if isinstance(weights, Mapping) else load_state_dict_file(weights)
    if not _is_state_dict(state):
        raise SdpruneError(f"weights must be a state dict (names -> tensors), not {_describe(state)}")
    if arch is None:
        arch = detect_torchvision_arch(state)
        if arch is None:
            raise SdpruneError("these weights are none of the torchvision architectures sdprune adopts "
                               f"({', '.join(TORCHVISION_ARCHS)}); name the architecture to see why")
    lay = check_torchvision_keys(state, model_name(arch))
    head_w = lay.head[0]
    weights_classes, weights_in = int(state[head_w].shape[0]), int(state[lay.first_conv].shape[1])
    num_classes = weights_classes if num_classes is None else num_classes
    model = create_model(lay.name, num_classes=num_classes, in_channels=in_channels, **kwargs)
    own = model.state_dict()
    problem = shape_mismatch(state, lay, {k: tuple(own[g].shape) for k, g in lay.to_gated.items()})
    if problem is not None:
        raise SdpruneError(f"weights do not fit {lay.name}: {problem}")
    gated = torchvision_to_gated(state, lay.name)
    new_head = weights_classes != num_classes
    if new_head:  # the backbone is kept, the head stays as the builder initialised it
        for key in lay.head:
            gated[lay.to_gated[key]] = own[lay.to_gated[key]]
    first = lay.to_gated[lay.first_conv]
    gated[first] = adapt_input_conv(gated[first], in_channels)
    for key in own.keys() - gated.keys():  # optional BatchNorm counters absent from the file
        gated[key] = own[key]
    model.load_state_dict(gated)
    conv = "kept" if in_channels == weights_in else "summed" if in_channels == 1 else "repeated"
    return model, {"arch": lay.name, "new_head": new_head, "weights_classes": weights_classes,
                   "num_classes": num_classes, "input_conv": conv, "weights_in_channels": weights_in,
                   "in_channels": in_channels}

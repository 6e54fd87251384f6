"""Adopt weights trained elsewhere: convert them to the gated layout and back, and load
them into sdprune's network (reading them from the files people save:
``sdprune.nets.weights_file``).

Each source of weights is a key layout (``sdprune.nets.layout``): torchvision's (read off
its modules) and the public CIFAR ResNets' (``sdprune.nets.cifar_layout``). Everything here
works on any layout, so a new source is a new layout, not a new code path. Weights are only
ever read with ``torch.load(weights_only=True)``: a file holding pickled code (a whole
saved ``nn.Module``) is refused, never executed.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import Tensor, nn

from sdprune.errors import SdpruneError
from sdprune.nets.cifar_layout import DEPTHS as CIFAR_DEPTHS
from sdprune.nets.cifar_layout import cifar_layouts
from sdprune.nets.cifar_layout import guess as guess_cifar
from sdprune.nets.layout import (Layout, Reorder, StateDict, key_mismatch, looks_gated, shape_mismatch,
                                 torchvision_layout)
from sdprune.nets.registry import create_model
from sdprune.nets.torchvision_nets import TORCHVISION_ARCHS, guess_torchvision, torchvision_family
from sdprune.nets.weights_file import describe_object, is_state_dict, load_state_dict_file

__all__ = ["adapt_input_conv", "adopt_weights", "adoptable", "detect_arch", "from_gated", "to_gated"]


Layouts = Callable[[Mapping[str, Any]], tuple[Layout, ...]]  # builder kwargs -> the layouts they give


def _catalogue() -> dict[str, tuple[str, Layouts]]:
    """sdprune's name -> (the source's name, its layouts, built on first use: building every
    layout of every source takes seconds, and one file needs one or two). torchvision's
    follow builder kwargs (a custom configuration); the CIFAR ResNets' are fixed."""
    table: dict[str, tuple[str, Layouts]] = {
        name: (arch, functools.partial(lambda n, kwargs: (torchvision_layout(n, kwargs),), name))
        for name, arch in TORCHVISION_ARCHS.items()}
    table.update({f"resnet{d}": (f"resnet{d}", functools.partial(lambda d, kwargs: cifar_layouts(d), d))
                  for d in CIFAR_DEPTHS})
    return table


def adoptable() -> list[str]:
    """sdprune's names of the architectures whose weights it adopts."""
    return list(_catalogue())


def _named(arch: str, kwargs: Mapping[str, Any] | None = None) -> tuple[Layout, ...]:
    """The layouts of ``arch`` (sdprune's name or the source's: "tv_resnet18" or "resnet18")
    built with builder ``kwargs``."""
    for name, (source_name, layouts) in _catalogue().items():
        if arch in (name, source_name):
            return layouts(kwargs or {})
    raise SdpruneError(f"{arch!r} has no weights layout sdprune adopts; it adopts {', '.join(adoptable())}")


def _fits(state_dict: StateDict, lay: Layout) -> bool:
    return key_mismatch(state_dict, lay.to_gated) is None and shape_mismatch(state_dict, lay) is None


def detect_arch(state_dict: StateDict) -> str | None:
    """sdprune's name of the architecture these weights are (any number of classes and input
    channels), or None when they fit none of the layouts sdprune adopts."""
    lay = _detect(state_dict)
    return lay.name if lay is not None else None


def _detect(state_dict: StateDict) -> Layout | None:
    guessed = guess_torchvision(state_dict) + guess_cifar(state_dict)  # the likely ones first: cheap
    for name in dict.fromkeys([*guessed, *adoptable()]):
        if name not in guessed and not _family_may_fit(state_dict, name):
            continue
        lay = next((lay for lay in _named(name) if _fits(state_dict, lay)), None)
        if lay is not None:
            return lay
    return None


def _family_may_fit(state_dict: StateDict, name: str) -> bool:
    """Whether ``name`` may fit, from one layout per family: every variant of a family (a
    torchvision family; the CIFAR ResNets) names its first convolution and classifier alike,
    so a family whose keys these lack is ruled out without building the layout of each of its
    variants (seconds each on the meta device)."""
    first = next(iter(torchvision_family(TORCHVISION_ARCHS[name]).archs)) if name in TORCHVISION_ARCHS else "resnet20"
    return any(lay.first_conv in state_dict and lay.head[0] in state_dict for lay in _named(first))


def _refuse_undetected(state_dict: StateDict) -> None:
    """Why weights fit no layout: the likely architecture's first mismatch, where the keys
    suggest one; else the list of what sdprune adopts."""
    for name in guess_torchvision(state_dict) + guess_cifar(state_dict):
        for lay in _named(name):
            problem = key_mismatch(state_dict, lay.to_gated) or shape_mismatch(state_dict, lay)
            raise SdpruneError(f"these weights look like {lay.name} but do not fit it: {problem}")
    raise SdpruneError("these weights are none of the architectures sdprune adopts "
                       f"({', '.join(adoptable())}); name the architecture to see why")


def check_keys(state_dict: StateDict, arch: str, kwargs: Mapping[str, Any] | None = None) -> Layout:
    """The layout of ``arch`` (built with builder ``kwargs``) whose keys the state dict has
    exactly; otherwise a one-line SdpruneError naming what does not match (another
    architecture, when the weights are recognisably one; else the first missing and
    unexpected keys)."""
    candidates = _named(arch, kwargs)
    if looks_gated(state_dict):
        raise SdpruneError("these weights are in sdprune's gated layout (an sdprune checkpoint?), "
                           "not a layout sdprune adopts from")
    for lay in candidates:
        if key_mismatch(state_dict, lay.to_gated) is None:
            return lay
    detected = _detect(state_dict)
    if detected is not None:
        raise SdpruneError(f"weights look like {detected.name} ({detected.source} {detected.arch}), "
                           f"not {candidates[0].name}")
    problems = [key_mismatch(state_dict, lay.to_gated) for lay in candidates]
    problem = min(problems, key=lambda p: len(p or ""))  # the closest of the candidates
    raise SdpruneError(f"weights do not fit {candidates[0].name}: {problem}")


def _reorder(tensor: Tensor, steps: Reorder, inverse: bool = False) -> Tensor:
    """``tensor`` with its channels reordered as a layout says (or back, with ``inverse``)."""
    for dim, order in (reversed(steps) if inverse else steps):
        index = torch.tensor(order, device=tensor.device)
        if inverse:
            index = torch.argsort(index)
        tensor = tensor.index_select(dim, index)
    return tensor


def to_gated(state_dict: StateDict, arch: str, **kwargs: Any) -> dict[str, Tensor]:
    """A source's keys -> the gated network's (``kwargs``: the builder's, for a custom
    configuration). Each block's survival is the prior it was trained with (1 - torchvision's
    drop rate; 1.0 for a network trained without stochastic depth) and 1 / prior is folded
    into its branch's output scale, so the gated network computes exactly the source
    network's function. Tensors are shared, not copied, unless the layout reorders their
    channels or folds a prior into them; the keys must be exactly the architecture's."""
    lay = check_keys(state_dict, arch, kwargs)
    return _to_gated(state_dict, lay)


def _to_gated(state_dict: StateDict, lay: Layout) -> dict[str, Tensor]:
    from_gated = {g: t for t, g in lay.to_gated.items()}
    priors = {b.survival: b.prior for b in lay.blocks}
    out: dict[str, Tensor] = {}
    for key in lay.gated_keys:
        src = from_gated.get(key)
        if key in lay.made:  # an output scale sdprune adds: 1 in the source's function
            out[key] = torch.ones(lay.made[key])
        elif src is None:  # a survival buffer
            prior = priors.get(key, 1.0)
            out[key] = torch.ones(()) if prior == 1.0 else torch.tensor(prior, dtype=torch.float32)
        elif src in state_dict:  # only an optional key may be absent
            out[key] = _reorder(state_dict[src], lay.order.get(src, ()))
    for block in lay.blocks:
        if block.prior != 1.0:  # the inverted convention: the branch evaluates to prior * (scale / prior)
            p = float(out[block.survival])  # the float32 survival eval multiplies by
            for key in (*(lay.to_gated[src] for src in block.fold), *block.made):
                out[key] = out[key] / p
    return out


def from_gated(state_dict: StateDict, arch: str, **kwargs: Any) -> dict[str, Tensor]:
    """The gated network's keys -> the source's (torchvision's, or the CIFAR ResNets' option
    A or B, whichever the gated network's shortcuts are; ``kwargs``: the builder's). A
    block's survival p != 1 is folded into its branch's output scale (its last BatchNorm's
    weight and bias, a layer scale: multiplied by p), so the source network computes in eval
    what the gated one does (an adopted prior comes back out exactly as it went in). A
    network with removed blocks has no equivalent there and is refused, as is a block whose
    added output scale (a made key) times its survival is not 1."""
    if not looks_gated(state_dict):
        raise SdpruneError("these weights are not in sdprune's gated layout (a source layout already?)")
    candidates = _named(arch, kwargs)
    lay = next((c for c in candidates if key_mismatch(state_dict, c.gated_keys) is None), candidates[0])
    removed = [b.name for b in lay.blocks if b.survival not in state_dict
               and not any(k.startswith(f"{b.name}.branch.") for k in state_dict)]
    if removed:
        raise SdpruneError(f"{len(removed)} of {lay.name}'s blocks were removed (e.g. {removed[0]}): "
                           f"a pruned network has no {lay.source} equivalent")
    problem = key_mismatch(state_dict, lay.gated_keys)
    if problem is not None:
        raise SdpruneError(f"weights do not fit the gated {lay.name}: {problem}")
    out = {k: state_dict[g] for k, g in lay.to_gated.items() if g in state_dict}
    for block in lay.blocks:
        p = float(state_dict[block.survival])
        for key in block.made:  # no tensor of the source's to fold into: the scale must be 1 there
            scale = state_dict[key].double() * p
            if not torch.allclose(scale, torch.ones_like(scale), rtol=0, atol=1e-6):
                raise SdpruneError(f"{block.name} scales its branch by {float(scale.flatten()[0]):.6g} (survival "
                                   f"times its output scale), which {lay.source} {lay.arch} cannot express")
        if p != 1.0:
            for key in block.fold:
                out[key] = out[key] * p
    return {k: _reorder(v, lay.order.get(k, ()), inverse=True) for k, v in out.items()}


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


def adopt_weights(weights: StateDict | str | os.PathLike, arch: str | None,
                  num_classes: int | None = None, in_channels: int = 3,
                  **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """sdprune's gated network with weights trained elsewhere: before any training it
    computes exactly what the source network with those weights computes.

    ``weights``: a state dict in a layout sdprune adopts (torchvision's, the CIFAR
    ResNets'), or a file holding one (``load_state_dict_file``). ``arch``: sdprune's or the
    source's name ("tv_resnet18" or "resnet18"; None: recognised from the weights). Each
    block's survival is the prior it was trained with (``to_gated``).
    ``num_classes`` other than the weights' (None: the weights') keeps the backbone and
    gives the network a fresh head; ``in_channels`` other than the weights' adapts the
    first convolution (``adapt_input_conv``). ``kwargs`` go to the builder (and, with
    ``arch``, shape the expected layout: a custom ConvNeXt's ``block_setting``). Weights of
    another architecture, or missing, unexpected or mis-shaped tensors, are a one-line
    SdpruneError. Returns the model (in training mode, as built) and what was done,
    JSON-able: arch, source, kwargs (the builder's, as a checkpoint records them),
    new_head, weights_classes, num_classes, input_conv ("kept", "summed" or "repeated"),
    weights_in_channels, in_channels.
    """
    state = weights if isinstance(weights, Mapping) else load_state_dict_file(weights)
    if not is_state_dict(state):
        raise SdpruneError(f"weights must be a state dict (names -> tensors), not {describe_object(state)}")
    if arch is None:
        lay = _detect(state)
        if lay is None:
            _refuse_undetected(state)
    else:
        lay = check_keys(state, arch, kwargs)
    head_w = lay.head[0]
    weights_classes, weights_in = int(state[head_w].shape[0]), int(state[lay.first_conv].shape[1])
    num_classes = weights_classes if num_classes is None else num_classes
    builder_kwargs = {**lay.kwargs, **kwargs}
    model = create_model(lay.name, num_classes=num_classes, in_channels=in_channels, **builder_kwargs)
    own = model.state_dict()
    problem = shape_mismatch(state, lay, {k: tuple(own[g].shape) for k, g in lay.to_gated.items()})
    if problem is not None:
        raise SdpruneError(f"weights do not fit {lay.name}: {problem}")
    gated = _to_gated(state, lay)
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
    return model, {"arch": lay.name, "source": lay.source, "kwargs": builder_kwargs, "new_head": new_head,
                   "weights_classes": weights_classes, "num_classes": num_classes, "input_conv": conv,
                   "weights_in_channels": weights_in, "in_channels": in_channels}

"""Key layouts: how a source of weights names the tensors of a network sdprune builds.

A ``Layout`` maps one source's state-dict keys to the gated network's (plus, where the
two order a tensor's channels differently, the reordering), so converting weights either
way is one generic function (``sdprune.nets.convert``) and a new source of weights is a
new layout, not new code paths.

torchvision's layouts are not hand-written tables: ``torchvision_layout`` builds
torchvision's network on the meta device, notes which tensor each key names, gates it as
the registry does and reads the new keys of the same tensors (``layer1.0.conv1.weight``
-> ``layer1.0.branch.0.weight``), so it follows ``torchvision_nets`` and ``wrap`` wherever
they go, and records each block's prior survival and fold keys as its adapter declares them
(``sdprune.nets.wrap.BlockWrapper``). The CIFAR ResNets' layouts are in ``sdprune.nets.cifar_layout``. Also here:
saying in one line where a state dict does not fit a layout.
"""


from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sdprune.depth.structure import gated_blocks
from sdprune.nets.torchvision_nets import TORCHVISION_ARCHS, torchvision_model
from sdprune.nets.wrap import wrap_blocks

StateDict = Mapping[str, Tensor]


@dataclass(frozen=True)
class Block:
    """One gated block, as its keys: where its survival lives, which source tensors scale
    its branch's output (where a survival is folded), and the survival it was trained with."""

    name: str
    survival: str  # the gated key of its survival buffer
    fold: tuple[str, ...]  # source keys of the branch's output scale (a BatchNorm's weight and bias, a layer scale)
    prior: float = 1.0  # its survival in the source's training (1 - torchvision's drop rate): adoption's survival


# How a source tensor becomes the gated one: index_select(dim, order) for each (dim, order),
# in turn ("gated channel j is source channel order[j]"); empty for most keys.
Reorder = tuple[tuple[int, tuple[int, ...]], ...]


@dataclass(frozen=True)
class Layout:
    """One source's key layout of one architecture, and the gated network's."""

    name: str  # sdprune's registry name (tv_resnet18, resnet56)
    arch: str  # the source's own name (resnet18)
    to_gated: dict[str, str]  # source key -> gated key, in the source's order
    gated_keys: tuple[str, ...]  # the gated network's keys, in its order
    shapes: dict[str, tuple[int, ...]]  # source key -> shape (the source's classes, RGB input)
    blocks: tuple[Block, ...]
    first_conv: str  # source key of the first convolution's weight
    head: tuple[str, str]  # source keys of the classifier (weight, bias)
    source: str = "torchvision"  # where such weights come from, as the checkpoint records it
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # sdprune builder arguments it needs
    order: Mapping[str, Reorder] = field(default_factory=dict)  # source key -> its reordering


def torchvision_layout(name: str, kwargs: Mapping[str, Any] | None = None) -> Layout:
    """The layout of torchvision's weights for sdprune's ``name`` (a key of
    ``TORCHVISION_ARCHS``) built with builder ``kwargs`` (a custom configuration), built
    once per configuration on the meta device."""
    kwargs = dict(kwargs or {})
    key = (name, json.dumps(kwargs, sort_keys=True, default=repr))
    if key not in _LAYOUTS:
        _LAYOUTS[key] = _layout(name, kwargs)
    return _LAYOUTS[key]


_LAYOUTS: dict[tuple[str, str], Layout] = {}  # (name, its kwargs as JSON) -> layout: a cache


def _layout(name: str, kwargs: dict[str, Any]) -> Layout:
    with torch.device("meta"):
        model = torchvision_model(TORCHVISION_ARCHS[name], num_classes=1000, in_channels=3, **kwargs)
    tv_state = model.state_dict(keep_vars=True)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    wrapped = wrap_blocks(model)  # as the registry's builder gates it (folding nothing on meta tensors)
    gated_state = model.state_dict(keep_vars=True)
    gated_key = {id(t): k for k, t in gated_state.items()}
    to_gated = {k: gated_key[id(t)] for k, t in tv_state.items() if id(t) in gated_key}  # in the source's order
    if len(to_gated) != len(tv_state):
        raise RuntimeError(f"gating {name} lost or duplicated tensors")  # a bug in an adapter, not user input
    from_gated = {g: t for t, g in to_gated.items()}
    blocks = tuple(Block(n, f"{n}.survival", tuple(from_gated[f"{n}.{k}"] for k in wrapped[n].fold), wrapped[n].prior)
                   for n, _ in gated_blocks(model))
    extra = set(gated_state) - set(from_gated) - {b.survival for b in blocks}
    if extra:
        raise RuntimeError(f"{name}: gated keys with no torchvision counterpart: {sorted(extra)[:3]}")
    return Layout(name, TORCHVISION_ARCHS[name], to_gated, tuple(gated_state),
                  {k: tuple(t.shape) for k, t in tv_state.items()}, blocks,
                  f"{convs[0]}.weight", (f"{linears[-1]}.weight", f"{linears[-1]}.bias"), kwargs=kwargs)


def _optional(key: str) -> bool:
    # BatchNorm's step counter: absent from files saved before PyTorch 0.4.1, and harmless
    # to take from the model (it only matters for momentum=None).
    return key.endswith("num_batches_tracked")


def _shape(value: object) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, Tensor) else None


def key_mismatch(keys: object, expected: object) -> str | None:
    """"missing N keys (e.g. ...); M unexpected keys (e.g. ...)", or None when they fit."""
    keys, expected = list(keys), list(expected)
    have, want = set(keys), set(expected)
    missing = [k for k in expected if k not in have and not _optional(k)]
    unexpected = [k for k in keys if k not in want]
    parts = [f"missing {len(missing)} key{'s' * (len(missing) > 1)} (e.g. {missing[0]})"] if missing else []
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key{'s' * (len(unexpected) > 1)} (e.g. {unexpected[0]})")
    return "; ".join(parts) or None


def shape_mismatch(state_dict: StateDict, lay: Layout,
                   shapes: Mapping[str, tuple[int, ...]] | None = None) -> str | None:
    """The first tensor whose shape differs from ``shapes`` (default: the layout's), head
    rows and first-convolution input channels excepted; None when all agree."""
    shapes = lay.shapes if shapes is None else shapes
    wrong = []
    for key, want in shapes.items():
        got = _shape(state_dict.get(key)) if key in state_dict else want
        if got is None:
            return f"{key} is not a tensor"
        free = 0 if key in lay.head else 1 if key == lay.first_conv else None  # dims allowed to differ
        if len(got) != len(want) or any(g != w for i, (g, w) in enumerate(zip(got, want)) if i != free):
            wrong.append((key, got, want))
    weight, bias = (_shape(state_dict.get(k)) for k in lay.head)
    if not wrong and weight and bias and weight[:1] != bias[:1]:  # free to differ from the layout, not from each other
        return f"the classifier's {lay.head[0]} has {weight[0]} rows and {lay.head[1]} {bias[0]} values"
    if not wrong:
        return None
    key, got, want = wrong[0]
    more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
    return f"{key} is {_dims(got)} in the weights, {_dims(want)} in {lay.name}{more}"


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "a scalar"


def looks_gated(state_dict: StateDict) -> bool:
    """Whether the keys are in sdprune's gated layout rather than torchvision's."""
    return any(k.endswith(".survival") or ".branch." in k for k in state_dict)

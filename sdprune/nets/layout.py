"""The key layouts of the torchvision architectures sdprune adopts, read off their modules.

A torchvision state dict names its tensors as torchvision's modules do; the gated network
holds the very same layers, re-wrapped (``layer1.0.conv1.weight`` ->
``layer1.0.branch.0.weight``) with a ``survival`` buffer per block. The mapping between
the two is not a hand-written table: ``layout`` builds torchvision's network on the meta
device, notes which tensor each key names, gates it as the registry does and reads the
new keys of the same tensors, so it follows ``torchvision_nets`` and ``wrap`` wherever
they go. Also here: recognising an architecture from its keys and shapes, and saying in
one line where a state dict does not fit one.
"""


from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sdprune.depth.structure import gated_blocks
from sdprune.errors import SdpruneError
from sdprune.nets.torchvision_nets import TORCHVISION_ARCHS, torchvision_model
from sdprune.nets.wrap import gate_residual_blocks

StateDict = Mapping[str, Tensor]


@dataclass(frozen=True)
class Block:
    """One gated block, as its keys: where its survival lives and which BN it folds into."""

    name: str
    survival: str  # the gated key of its survival buffer
    fold: tuple[str, str]  # torchvision keys of the branch's last BatchNorm (weight, bias)


@dataclass(frozen=True)
class Layout:
    """The two key layouts of one architecture, read off its modules."""

    name: str  # sdprune's name (tv_resnet18)
    arch: str  # torchvision's (resnet18)
    to_gated: dict[str, str]  # torchvision key -> gated key, in torchvision's order
    gated_keys: tuple[str, ...]  # the gated network's keys, in its order
    shapes: dict[str, tuple[int, ...]]  # torchvision key -> shape (1000 classes, RGB input)
    blocks: tuple[Block, ...]
    first_conv: str  # torchvision key of the first convolution's weight
    head: tuple[str, str]  # torchvision keys of the classifier (weight, bias)


def model_name(arch: str) -> str:
    """sdprune's name for a torchvision architecture sdprune adopts ("resnet18" or
    "tv_resnet18" -> "tv_resnet18"); anything else is an error listing them."""
    if arch in TORCHVISION_ARCHS:
        return arch
    for name, tv_arch in TORCHVISION_ARCHS.items():
        if arch == tv_arch:
            return name
    raise SdpruneError(f"{arch!r} has no torchvision weights to adopt; sdprune adopts "
                       f"{', '.join(TORCHVISION_ARCHS)}")


def layout(arch: str) -> Layout:
    """The key layouts of ``arch`` (either name), built once on the meta device."""
    return _layout(model_name(arch))


@functools.cache
def _layout(name: str) -> Layout:
    with torch.device("meta"):
        model = torchvision_model(TORCHVISION_ARCHS[name], num_classes=1000, in_channels=3)
    tv_state = model.state_dict(keep_vars=True)
    tv_key = {id(t): k for k, t in tv_state.items()}
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    gate_residual_blocks(model)
    gated_state = model.state_dict(keep_vars=True)
    to_gated = {tv_key[id(t)]: k for k, t in gated_state.items() if id(t) in tv_key}
    if len(to_gated) != len(tv_state):
        raise RuntimeError(f"gating {name} lost or duplicated tensors")  # a bug in wrap, not user input
    from_gated = {g: t for t, g in to_gated.items()}
    blocks = []
    for block_name, block in gated_blocks(model):
        last_name, last = list(block.branch.named_modules())[-1]
        if not isinstance(last, nn.BatchNorm2d):
            raise TypeError(f"{name}: the branch of {block_name} does not end in a BatchNorm")
        prefix = f"{block_name}.branch.{last_name}"
        blocks.append(Block(block_name, f"{block_name}.survival",
                            (from_gated[f"{prefix}.weight"], from_gated[f"{prefix}.bias"])))
    extra = set(gated_state) - set(from_gated) - {b.survival for b in blocks}
    if extra:
        raise RuntimeError(f"{name}: gated keys with no torchvision counterpart: {sorted(extra)[:3]}")
    return Layout(name, TORCHVISION_ARCHS[name], to_gated, tuple(gated_state),
                  {k: tuple(t.shape) for k, t in tv_state.items()}, tuple(blocks),
                  f"{convs[0]}.weight", (f"{linears[-1]}.weight", f"{linears[-1]}.bias"))


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
    if not wrong:
        return None
    key, got, want = wrong[0]
    more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
    return f"{key} is {_dims(got)} in the weights, {_dims(want)} in {lay.name}{more}"


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "a scalar"


def detect_torchvision_arch(state_dict: StateDict) -> str | None:
    """sdprune's name of the torchvision architecture these weights are (any number of
    classes and input channels), or None when they are none of those sdprune adopts."""
    keys = {k for k in state_dict if not _optional(k)}
    for name in TORCHVISION_ARCHS:
        lay = layout(name)
        if keys == {k for k in lay.shapes if not _optional(k)} and shape_mismatch(state_dict, lay) is None:
            return name
    return None


def looks_gated(state_dict: StateDict) -> bool:
    """Whether the keys are in sdprune's gated layout rather than torchvision's."""
    return any(k.endswith(".survival") or ".branch." in k for k in state_dict)


def check_torchvision_keys(state_dict: StateDict, arch: str) -> Layout:
    """The layout of ``arch`` if the state dict has exactly its torchvision keys; otherwise
    a one-line SdpruneError naming what does not match (another architecture, when the
    weights are recognisably one; else the missing and unexpected keys)."""
    lay = layout(arch)
    if looks_gated(state_dict):
        raise SdpruneError("these weights are in sdprune's gated layout (an sdprune checkpoint?), "
                           "not torchvision's")
    problem = key_mismatch(state_dict, lay.to_gated)
    if problem is None:
        return lay
    detected = detect_torchvision_arch(state_dict)
    if detected is not None:
        raise SdpruneError(f"weights look like {detected} (torchvision {TORCHVISION_ARCHS[detected]}), "
                           f"not {lay.name}")
    raise SdpruneError(f"weights do not fit {lay.name}: {problem}")

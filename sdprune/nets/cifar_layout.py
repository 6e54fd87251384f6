"""The key layout of the public CIFAR ResNets' weights (He et al. 2016, section 4.2).

The most used CIFAR-10 ResNet weights (Y. Idelbayev's ``pytorch_resnet_cifar10``: ResNet-20
to ResNet-1202, and the many repositories that copied its model file) name their tensors
``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv,bn}{1,2}`` and ``linear``, and come in two
shortcut options:

* option A (the paper's, and those published weights): where a stage halves the
  resolution, the shortcut subsamples by 2 and zero-pads the new channels **on both
  sides** (``planes // 4`` before and after). sdprune's ``pad`` shortcut pads after only.
  We adopt such weights by permuting the channels of the residual stream, not by adding a
  second padding shortcut: a permutation of the stream (the same one applied to every
  tensor that writes or reads it) leaves the function unchanged, since BatchNorm, ReLU and
  the addition act channel by channel, and the adopted network is then exactly sdprune's
  ``resnet56``, the architecture every other sdprune run, pruned network and ONNX file of
  that name already has. A second shortcut would be an architecture variant every later
  step (removal, export, comparisons with networks trained here) had to carry.
* option B: a 1x1 convolution and BatchNorm (``layer{2,3}.0.shortcut.{0,1}``): sdprune's
  ``conv`` shortcut, no reordering.

The permutation: in stage s, gated channel j holds source channel ``order_s[j]``. Stage 1
is the identity; entering a stage of ``cout`` channels from ``cin``, the ``cin`` channels
that carry the stream sit at ``before + order_{s-1}[j]`` in the source (``before =
(cout - cin) // 2``) and the zero-padded ones fill the rest. Every tensor that writes the
stream (a block's last convolution and BatchNorm) is reordered along its outputs, every
one that reads it (a block's first convolution, an option-B shortcut, the classifier)
along its inputs.
"""

from __future__ import annotations

import functools
import re

import torch
from torch import nn

from sdprune.depth.structure import gated_blocks
from sdprune.nets.layout import Block, Layout, Reorder
from sdprune.nets.registry import create_model

SOURCE = "cifar-resnet"  # as adopted checkpoints record it
DEPTHS = (20, 32, 44, 56, 110, 1202)  # the depths those weights are published for

# sdprune's module path -> the CIFAR ResNet's (gated blocks at stages.<s>.<i>; s from 0).
_NAMES = (
    (r"stem\.0\.", lambda m: "conv1."),
    (r"stem\.1\.", lambda m: "bn1."),
    (r"head\.2\.", lambda m: "linear."),
    (r"stages\.(\d+)\.(\d+)\.branch\.0\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv1."),
    (r"stages\.(\d+)\.(\d+)\.branch\.1\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn1."),
    (r"stages\.(\d+)\.(\d+)\.branch\.3\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv2."),
    (r"stages\.(\d+)\.(\d+)\.branch\.4\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn2."),
    (r"stages\.(\d+)\.(\d+)\.shortcut\.([01])\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.shortcut.{m[3]}."),
)


def _source_key(gated_key: str) -> str | None:
    for pattern, name in _NAMES:
        m = re.match(pattern, gated_key)
        if m:
            return name(m) + gated_key[m.end():]
    return None  # a survival buffer: no counterpart


def cifar_layouts(depth: int) -> tuple[Layout, ...]:
    """Both shortcut options' layouts of CIFAR ResNet-``depth``."""
    return tuple(cifar_layout(depth, option) for option in "AB")


def guess(keys) -> list[str]:
    """The depth these keys name, as sdprune's model name, when they look like a CIFAR
    ResNet's (a cheap hint: the layout itself decides)."""
    keys = set(keys)
    if not {"conv1.weight", "linear.weight"} <= keys:
        return []
    n = sum(1 for k in keys if re.fullmatch(r"layer1\.\d+\.conv1\.weight", k))
    return [f"resnet{6 * n + 2}"] if 6 * n + 2 in DEPTHS else []


@functools.cache
def cifar_layout(depth: int, option: str = "A") -> Layout:
    """The layout of CIFAR ResNet-``depth`` weights with shortcut ``option`` "A" or "B"."""
    kwargs = {"shortcut": "pad"} if option == "A" else {"shortcut": "conv"}
    name = f"resnet{depth}"
    with torch.device("meta"):
        model = create_model(name, num_classes=10, in_channels=3, **kwargs)
    state = model.state_dict()
    to_gated = {src: g for g, src in ((g, _source_key(g)) for g in state) if src is not None}
    from_gated = {g: s for s, g in to_gated.items()}
    blocks = tuple(Block(n, f"{n}.survival", (from_gated[f"{n}.branch.4.weight"], from_gated[f"{n}.branch.4.bias"]))
                   for n, _ in gated_blocks(model))  # the branch's last BatchNorm takes a folded survival
    order = _stream_order(model, to_gated) if option == "A" else {}
    return Layout(name, name, to_gated, tuple(state), {s: tuple(state[g].shape) for s, g in to_gated.items()},
                  blocks, "conv1.weight", ("linear.weight", "linear.bias"), source=SOURCE,
                  kwargs={} if option == "A" else kwargs, order=order)


def _stream_order(model: nn.Module, to_gated: dict[str, str]) -> dict[str, Reorder]:
    """Option A's reordering of every tensor that writes or reads the residual stream."""
    from_gated = {g: s for s, g in to_gated.items()}
    order: dict[str, Reorder] = {}
    stream = list(range(model.stem[0].out_channels))  # stage 1: the stem's channels, as they are
    for name, block in gated_blocks(model):
        cin, cout = block.branch[0].in_channels, block.branch[3].out_channels
        reads = tuple(stream)
        if cout != cin:  # a transition: option A pads (cout - cin) // 2 zero channels before
            before = (cout - cin) // 2
            stream = [before + c for c in stream] + list(range(before)) + list(range(before + cin, cout))
        writes = tuple(stream)
        order[from_gated[f"{name}.branch.0.weight"]] = ((1, reads),)
        for key in ("branch.3.weight", "branch.4.weight", "branch.4.bias", "branch.4.running_mean",
                    "branch.4.running_var"):
            order[from_gated[f"{name}.{key}"]] = ((0, writes),)
    order["linear.weight"] = ((1, tuple(stream)),)
    return {k: v for k, v in order.items() if any(list(idx) != list(range(len(idx))) for _, idx in v)}

"""Gate the residual blocks of a network someone built themselves.

``gate_residual_blocks`` re-wraps each torchvision residual block, in place, as a
``GatedBlock`` made of the block's own layers: act(shortcut(x) + g * branch(x)). The layers
(and so the weights) are the same objects, so the wrapped network computes the same
function in eval (every survival starts at 1) and sdprune can then train it with
stochastic depth, score its blocks (``sdprune.depth.structure.gated_blocks``), remove them
(``remove_blocks``) and export it. The registered ``tv_*`` and ``mobilenet_v2`` networks
are built this way, so block wrapping lives here and nowhere else.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual as InvertedResidualV2
from torchvision.models.mobilenetv3 import InvertedResidual as InvertedResidualV3
from torchvision.models.resnet import BasicBlock, Bottleneck

from sdprune.depth.block import GatedBlock
from sdprune.depth.structure import gated_blocks
from sdprune.errors import SdpruneError

# The blocks we know how to read (their forward is what we re-express): a subclass that
# overrides forward computes something else, and wrapping it would silently change it.
_KNOWN = (BasicBlock, Bottleneck, InvertedResidualV2, InvertedResidualV3)


def gate_resnet_block(block: BasicBlock | Bottleneck) -> GatedBlock:
    """A torchvision ResNet block as a GatedBlock with the same layers:
    relu(downsample(x) + bn2(conv2(relu(bn1(conv1(x)))))) (and conv3/bn3 in a bottleneck)."""
    layers = [block.conv1, block.bn1, nn.ReLU(inplace=True), block.conv2, block.bn2]
    if isinstance(block, Bottleneck):
        layers += [nn.ReLU(inplace=True), block.conv3, block.bn3]
    return GatedBlock(nn.Sequential(*layers), block.downsample, nn.ReLU())  # not in place: see GatedBlock


def gate_block(block: nn.Module) -> GatedBlock | None:
    """The GatedBlock computing what ``block`` computes, or None when it has no residual
    connection to gate (an inverted residual that changes shape, or any other module)."""
    base = next((cls for cls in _KNOWN if isinstance(block, cls)), None)
    if base is None:
        return None
    if type(block).forward is not base.forward:
        raise SdpruneError(f"{type(block).__name__} subclasses torchvision's {base.__name__} but "
                           "overrides forward: sdprune cannot tell what it computes")
    if base in (BasicBlock, Bottleneck):
        return gate_resnet_block(block)
    if not block.use_res_connect:
        return None
    return GatedBlock(block.conv if base is InvertedResidualV2 else block.block)


def gate_residual_blocks(model: nn.Module) -> nn.Module:
    """Wrap every residual block of a torchvision-style model as a GatedBlock, in place.

    Recognised: torchvision's ResNet ``BasicBlock`` and ``Bottleneck`` (so ResNets, ResNeXts
    and wide ResNets) and MobileNetV2/V3 inverted residuals with a skip connection. The
    model keeps its layers and weights and, in eval, its outputs. Blocks already gated are
    left as they are (calling this twice is harmless); a model with no residual block at
    all is an error. Returns the model.
    """
    wrapped = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            gated = gate_block(child)
            if gated is not None:
                setattr(module, child_name, gated)
                wrapped += 1
    if wrapped == 0 and not gated_blocks(model):
        raise SdpruneError(f"no residual block to gate in this {type(model).__name__}: sdprune "
                           "recognises torchvision's BasicBlock, Bottleneck and inverted residuals")
    return model

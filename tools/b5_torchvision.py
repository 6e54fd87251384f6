"""B5's torchvision path (``tools/bench_retrofit.py --model tv_resnet18``): what it needs beyond the CIFAR one.

The network you have is then a torchvision ResNet, and it reaches the retrofit the way a
user's would: as a ``torch.save(model.state_dict())`` file in torchvision's own key layout
(``have_state_dict``), adopted by ``sdprune train --init FILE``. So that this adoption is
exact, (e) is trained as torchvision weights are, on ImageNet's normalisation: it starts
from a freshly initialised torchvision ResNet saved in that format (``fresh_state_dict``),
adopted with distillation off and the from-scratch schedule. The data is Fashion-MNIST
upscaled into an RGB image folder (``write_folder``), read by sdprune's imagefolder loader;
the small networks of (c)/(d) are torchvision ResNets with fewer blocks per stage
(``ensure_tv_registered``); and the pruned retrofit is exported to int8 ONNX and scored by
ONNX Runtime (``deploy``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from sdprune.errors import SdpruneError
from sdprune.files import atomic_write
from sdprune.train.checkpoint import load_checkpoint, write_json

TV_STAGES = 4  # torchvision ResNets: four stages, each starting with a (downsampling) block


def tv_layers(kept: int) -> list[int]:
    """Blocks per stage of the torchvision ResNet with ``kept`` blocks, spread evenly (the extra blocks go to the deepest stages)."""
    if kept < TV_STAGES:
        raise SystemExit(f"a torchvision ResNet needs at least {TV_STAGES} blocks (one per stage), not {kept}")
    base, extra = divmod(kept, TV_STAGES)
    return [base + (1 if i >= TV_STAGES - extra else 0) for i in range(TV_STAGES)]


def ensure_tv_registered(layers: list[int]) -> str:
    """Register the gated torchvision BasicBlock ResNet with ``layers`` blocks per stage (this process only)."""
    from torchvision.models.resnet import BasicBlock, ResNet

    from sdprune.nets.registry import list_models, register
    from sdprune.nets.wrap import gate_residual_blocks

    name = f"tv_resnet{2 * sum(layers) + 2}_" + "".join(map(str, layers))
    if name not in list_models():
        @register(name, (3, 224, 224), f"torchvision BasicBlock ResNet {layers} (benchmark baseline)")
        def build(num_classes: int, in_channels: int, **kwargs):
            if in_channels != 3:
                raise SdpruneError("the B5 torchvision path uses an RGB folder")
            return gate_residual_blocks(ResNet(BasicBlock, layers, num_classes=num_classes, **kwargs))
    return name


def write_folder(idx_root: Path, out: Path, size: int) -> Path:
    """The idx subset under ``idx_root`` as ``out/{train,test}/<class>/<i>.png``, RGB, upscaled to ``size``."""
    from PIL import Image  # torchvision.io's encoders are deprecated (0.29); Pillow is sdprune's decoder too

    from sdprune.data.readers import load_splits

    marker = out / "folder.json"
    if marker.exists():
        if json.loads(marker.read_text()) != {"size": size}:
            raise SystemExit(f"{out} holds another image size; use another --out")
        return out
    train_set, test_set, classes, _ = load_splits("fashion-mnist", str(idx_root), False, None)
    for split, images in (("train", train_set), ("test", test_set)):
        big = F.interpolate(images.images.float(), size=(size, size), mode="bilinear", antialias=True)
        big = big.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)
        for i, (img, label) in enumerate(zip(big, images.labels.tolist())):
            folder = out / split / f"{label}-{classes[label].replace('/', '-')}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()).save(folder / f"{i:05d}.png")
    write_json(marker, {"size": size})
    return out


def fresh_state_dict(arch: str, num_classes: int, seed: int, path: Path) -> Path:
    """A freshly initialised torchvision ``arch`` saved as a user would save one (the start of (e))."""
    from torchvision import models

    if not path.exists():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = getattr(models, arch)(weights=None, num_classes=num_classes)
        atomic_write(path, lambda tmp: torch.save(model.state_dict(), tmp))
    return path


def have_state_dict(checkpoint: Path, arch: str, path: Path) -> Path:
    """(e) as torchvision's state dict (its keys, survivals folded in): the file a user brings."""
    from sdprune.nets.convert import from_gated

    if not path.exists():
        state = load_checkpoint(checkpoint)["state_dict"]
        atomic_write(path, lambda tmp: torch.save(from_gated(state, arch), tmp))
    return path


def deploy(pruned_checkpoint: Path, out: Path, folder: Path) -> dict:
    """int8 (arm target) and fp32 ONNX of the pruned retrofit, each scored as `sdprune eval FILE` scores it:
    ONNX Runtime with the file's own preprocessing metadata, on the test split of ``folder`` (an ONNX
    file names its dataset, not where a folder of images lives)."""
    from sdprune.deploy.package import export_checkpoint
    from sdprune.deploy.runtime import evaluate_onnx

    record = export_checkpoint(pruned_checkpoint, out, int8=True, int8_min_clear_agreement=0.0,
                               int8_max_drop=100.0)  # reported, not gated
    files = {f["name"]: f for f in record["files"]}
    result = {"parity": record["parity"], "int8": record["int8"]}
    for name in ("model.onnx", "model.int8.onnx"):
        scored = evaluate_onnx(out / name, data_dir=str(folder))
        result[name] = {"test_acc": scored["acc"], "n": scored["n"], "bytes": files[name]["bytes"]}
    return result

"""Starting training from a network someone already trained (``sdprune train --init``).

Two kinds of file are adopted, both loaded with ``weights_only`` (nothing is unpickled):

* an sdprune checkpoint (any run: plain, linear, learned, even pruned): the architecture,
  its removed blocks and its survivals come from the checkpoint's metadata;
* a state dict in a layout sdprune adopts (``sdprune.nets.convert``): torchvision's
  (ResNet-18..152, MobileNetV2, ConvNeXt-T/S/B/L), as ``torch.save(model.state_dict())``
  and torchvision's weights cache write it, or the public CIFAR ResNets' (ResNet-20..1202, with their
  ``{"best_prec1", "state_dict"}`` wrapper and DataParallel's ``module.`` prefix).

When the data has another number of classes, the classifier is new and the backbone
kept. The adopted network is also the teacher of retrofit training (distillation), so
``Adopted`` keeps what is needed to build it again on resume: nothing but the file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdprune.choices import PRIOR
from sdprune.depth.schedule import get_survival
from sdprune.depth.structure import remove_blocks
from sdprune.errors import SdpruneError
from sdprune.files import input_path, load_weights
from sdprune.nets.convert import adopt_weights
from sdprune.nets.registry import create_model
from sdprune.nets.weights_file import state_dict_from
from sdprune.report import Reporter
from sdprune.train.checkpoint import build_model, checkpoint_from, is_checkpoint
from sdprune.train.schema import describe_non_finite, non_finite

# What torchvision's ImageNet weights and the public CIFAR ResNets expect (1 channel: the mean
# of the three, as timm does). A state dict cannot say it: assumed, recorded, overridable.
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@dataclass
class Adopted:
    """A trained network in sdprune's gated form, and what it was adopted from."""
    model: nn.Module                       # eval mode, on the CPU
    model_name: str                        # registry name of its architecture
    removed: list[str]                     # blocks the file had already removed
    kwargs: dict[str, Any]                 # the architecture's builder arguments
    mean: list[float] | None               # the normalisation its weights were trained with
    std: list[float] | None
    source: dict[str, Any] = field(default_factory=dict)  # JSON-able: path, kind, new head ...


def adopt(path: str | Path, model_name: str | None, num_classes: int, in_channels: int, seed: int = 0) -> Adopted:
    """Load the network in ``path`` for data of ``num_classes`` classes and ``in_channels`` channels.

    ``model_name``, when given, must be the file's architecture (a mismatch is an error, not
    a silent rebuild). A new classifier is initialised from ``seed`` (the caller's global
    random state is left alone). Raises ``SdpruneError`` with one line for anything it cannot adopt.
    """
    path = input_path(path, "--init")
    file = input_path(path / "checkpoint.pt" if path.is_dir() else path, "--init", file=True)
    try:
        payload = load_weights(file)
    except Exception as err:  # a pickled module, a truncated file ...
        raise SdpruneError(f"--init {file} is not a weights file sdprune can read safely "
                           f"({type(err).__name__}); save a state_dict, not a model") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if is_checkpoint(payload):
            return _adopt_sdprune(file, checkpoint_from(payload, file, finite=True), model_name, num_classes,
                                  in_channels)  # NaN weights would 'diverge' at step 0: say what it is
        return _adopt_state_dict(file, state_dict_from(payload, file), model_name, num_classes, in_channels)


DATA_SETTINGS = ("dataset", "data_dir", "image_size", "data_mode", "bad_images", "eval_resize")


def data_settings(path: str | Path) -> dict[str, Any]:
    """The data settings (``DATA_SETTINGS``) of the sdprune run in ``path``, so that `train
    --init RUN` goes on with the data RUN was bound to; {} for anything else (a state dict
    says nothing about data, and an unreadable file is ``adopt``'s to refuse)."""
    path = Path(path)
    file = path / "checkpoint.pt" if path.is_dir() else path
    try:
        payload = load_weights(file)
    except Exception:  # noqa: BLE001 - refused, with its reason, when adopted
        return {}
    config = payload.get("meta", {}).get("config") if is_checkpoint(payload) else None
    return {k: config[k] for k in DATA_SETTINGS if k in config} if isinstance(config, dict) else {}


def with_init_data(overrides: dict[str, Any], recipe: str | None, reporter: Reporter) -> dict[str, Any]:
    """``overrides`` (None: not given) completed with the data settings of the run ``init``
    names, when neither ``dataset`` nor a recipe says which data to train on: `train --init RUN`
    goes on with RUN's data. Says so through ``reporter`` when it inherits anything."""
    init = overrides.get("init")
    if init is None or overrides.get("dataset") is not None or recipe is not None:
        return overrides
    inherited = {k: v for k, v in data_settings(init).items() if overrides.get(k) is None}
    if inherited:
        reporter.info(f"training on the data {init} was bound to: {inherited.get('dataset')} "
                      f"{inherited.get('data_dir') or ''}".rstrip())
    return {**overrides, **inherited}


def file_digest(path: Path) -> str:
    """sha256 of a file: a resumed retrofit checks its teacher is the file it started from."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _adopt_sdprune(file: Path, ckpt: dict[str, Any], model_name: str | None, num_classes: int,
                   in_channels: int) -> Adopted:
    meta = ckpt["meta"]
    arch = meta["model"]
    if model_name is not None and model_name != arch["name"]:
        raise SdpruneError(f"--init {file} is a {arch['name']}, not --model {model_name}")
    if arch["in_channels"] != in_channels:
        raise SdpruneError(f"--init {file} takes {arch['in_channels']}-channel images; "
                           f"this dataset has {in_channels}")
    source: dict[str, Any] = {"path": str(file), "sha256": file_digest(file), "kind": "sdprune", "new_head": False,
                              "survival": meta.get("config", {}).get("survival")}
    model = build_model(ckpt)
    if arch["num_classes"] != num_classes:
        model = _with_new_head(model, ckpt, num_classes)
        source["new_head"] = True
    data = meta.get("data", {})
    return Adopted(model, arch["name"], list(meta.get("removed", [])), dict(arch.get("kwargs", {})),
                   data.get("mean"), data.get("std"), source)


def _with_new_head(model: nn.Module, ckpt: dict, num_classes: int) -> nn.Module:
    """The same network with a freshly initialised classifier for ``num_classes``."""
    arch = ckpt["meta"]["model"]
    fresh = create_model(arch["name"], num_classes, arch["in_channels"], **arch.get("kwargs", {}))
    if ckpt["meta"].get("removed"):
        remove_blocks(fresh, ckpt["meta"]["removed"])
    new_state = fresh.state_dict()
    head = _classifier_keys(fresh)
    old = model.state_dict()
    for key, value in old.items():
        if key not in head:
            new_state[key] = value
    fresh.load_state_dict(new_state)
    return fresh.eval()


def _classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the network's last Linear layer (the classifier)."""
    last = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise SdpruneError("cannot find the classifier (no Linear layer) to give it new classes")
    return {f"{last[-1]}.{k}" for k, _ in model.get_submodule(last[-1]).named_parameters()}


def _adopt_state_dict(file: Path, state: dict[str, torch.Tensor], model_name: str | None, num_classes: int,
                      in_channels: int) -> Adopted:
    check_weight_types(file, state)
    bad = non_finite(state)
    if bad:
        raise SdpruneError(f"--init {file}: {describe_non_finite(bad)}")
    try:
        model, info = adopt_weights(state, model_name, num_classes, in_channels)
    except RuntimeError as err:  # load_state_dict refused what the layout checks let through
        raise SdpruneError(f"--init {file}: the weights do not fit the network ({_mismatch(err)})") from None
    # Assumed, not known: a state dict does not say how its images were normalised.
    mean = IMAGENET_MEAN if in_channels == 3 else [sum(IMAGENET_MEAN) / 3] * in_channels
    std = IMAGENET_STD if in_channels == 3 else [sum(IMAGENET_STD) / 3] * in_channels
    kwargs = info.pop("kwargs")
    # how the weights were trained: plainly, or with the source's stochastic depth (its priors)
    trained = "none" if all(p == 1.0 for p in get_survival(model)) else PRIOR
    source = {"path": str(file), "sha256": file_digest(file), "kind": info.pop("source"), "survival": trained, **info}
    return Adopted(model.eval(), info["arch"], [], kwargs, mean, std, source)


def check_weight_types(file: Path, state: dict[str, torch.Tensor]) -> None:
    """Refuse a state dict holding a non-floating tensor (BatchNorm's integer batch counter
    excepted): loading would cast it silently, integer weights to whole numbers (mostly 0),
    and training would start from a dead network."""
    for key, value in state.items():
        if not value.is_floating_point() and not key.endswith("num_batches_tracked"):
            raise SdpruneError(f"--init {file}: {key} holds {str(value.dtype).replace('torch.', '')} values, "
                               "not floating-point weights")


def _mismatch(err: RuntimeError) -> str:
    """The first problem ``load_state_dict`` lists (its message runs over many lines)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = next((line for line in lines[1:]), lines[0] if lines else type(err).__name__)
    return detail.replace("torch.Size(", "").replace("])", "]")[:200]

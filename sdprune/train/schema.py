"""What a checkpoint must hold, checked once, when it is loaded, for every command.

A checkpoint is a file anyone can edit or damage. ``check_checkpoint`` (run by
``load_checkpoint``) turns every malformed one into one ``SdpruneError`` that names the
field: required keys, their types and ranges, and the agreement between the metadata
and the tensors, proved against the architecture the metadata names, built on PyTorch's
``meta`` device (shapes only: no memory, no initialisation, whatever the metadata
claims). What the checks guarantee to the code that reads a checkpoint afterwards:

* ``model``: a registered name, ``num_classes`` / ``in_channels`` positive integers and
  ``kwargs`` the builder accepts; ``data``: a dataset name, one class name per output,
  an input shape (C, H, W) whose C is ``in_channels``, one finite mean and one positive
  finite std per channel;
* ``blocks`` are the architecture's gated blocks, in order; ``removed`` (and ``kept``, when
  there) name blocks of it; ``survival`` (metadata and tensors) lies in [0, 1];
* ``state_dict`` has exactly the architecture's tensors, of its shapes, after removal;
* ``config``, when there, is a valid ``TrainConfig``; a training checkpoint has whole
  ``epoch`` / ``step`` counts >= 0.

Non-finite weights are not malformed (a diverged run writes them): ``non_finite`` finds
them, and callers refuse (export, resume) or report them. ``load_training_state`` checks
what only a resume reads: optimizer and survival-controller state.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from sdprune.choices import DATASETS
from sdprune.depth.structure import block_names, remove_blocks
from sdprune.errors import SdpruneError
from sdprune.nets.registry import create_model
from sdprune.train.config import TrainConfig

MAX_SIDE = 8192  # pixels: no network sdprune builds takes larger images


def check_checkpoint(ckpt: dict[str, Any], where: str, schema: int) -> None:
    """Raise SdpruneError (one line, prefixed by ``where``) unless ``ckpt`` is a well-formed checkpoint."""

    def bad(message: str) -> None:
        raise SdpruneError(f"{where}: {message}")

    version = ckpt.get("schema")
    if not _is_int(version) or not 1 <= version:
        bad(f"schema must be a positive integer, got {_show(version)}")
    if version > schema:
        bad(f"written by a newer sdprune (schema {version}, this one reads {schema})")
    meta, state = ckpt.get("meta"), ckpt.get("state_dict")
    if not isinstance(meta, dict):
        bad(f"meta must be a dict, got {_kind(meta)}")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        bad("state_dict must map names to tensors")
    _check_meta(meta, bad)
    skeleton = architecture(meta, where)
    names = block_names(skeleton)
    if meta["blocks"] != names:
        bad(f"meta.blocks lists {len(meta['blocks'])} blocks, {meta['model']['name']} has {len(names)} "
            f"({_first_difference(meta['blocks'], names)})")
    removed = list(meta.get("removed") or [])
    unknown = [b for b in removed if b not in names]
    if unknown:
        bad(f"meta.removed names {_show(unknown[0])}, not a block of {meta['model']['name']}")
    if len(set(removed)) != len(removed):
        bad("meta.removed names a block twice")
    kept = [b for b in names if b not in removed]
    if "kept" in meta and meta["kept"] != kept:
        bad(f"meta.kept does not match meta.blocks without meta.removed ({_first_difference(meta['kept'], kept)})")
    survival = meta.get("survival")
    if survival is not None and len(survival) != len(kept):
        bad(f"meta.survival has {len(survival)} values for {len(kept)} blocks")
    remove_blocks(skeleton, removed)
    _check_tensors(state, skeleton.state_dict(), meta, bad)
    for name in kept:
        p = state[f"{name}.survival"]
        if p.numel() != 1 or not 0.0 <= float(p) <= 1.0:  # NaN fails too
            bad(f"the survival of block {name} must lie in [0, 1], got {p.flatten()[:1].tolist()}")


def architecture(meta: dict[str, Any], where: str) -> nn.Module:
    """The full (unpruned) architecture the metadata names, on the meta device: shapes, no memory."""
    arch = meta["model"]
    try:
        with torch.device("meta"):
            return create_model(arch["name"], arch["num_classes"], arch["in_channels"], **arch.get("kwargs", {}))
    except SdpruneError as err:
        raise SdpruneError(f"{where}: {err}") from None
    except Exception as err:  # noqa: BLE001 - a builder given edited kwargs may raise anything
        line = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise SdpruneError(f"{where}: cannot build {arch['name']} from meta.model ({line})") from None


def non_finite(state: dict[str, Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def describe_non_finite(names: list[str]) -> str:
    """'NaN or infinite values in stem.0.weight and 3 more tensors'."""
    more = f" and {len(names) - 1} more tensor{'s' if len(names) > 2 else ''}" if len(names) > 1 else ""
    return f"NaN or infinite values in {names[0]}{more}"


def check_resumable(ckpt: dict[str, Any]) -> None:
    """A loaded checkpoint a run can continue from: a training one, with optimizer state and finite weights."""
    where = ckpt.get("path", "checkpoint")
    if ckpt["meta"].get("kind") != "train" or "optimizer" not in ckpt:
        raise SdpruneError(f"{where} is not a resumable training checkpoint")
    for key in ("optimizer", "controller"):  # checked in full once loaded; the type now, before the run is locked
        if key in ckpt and not isinstance(ckpt[key], dict):
            raise SdpruneError(f"{where}: the {key} state must be a dict, got {_kind(ckpt[key])}")
    bad_weights = non_finite(ckpt["state_dict"])
    if bad_weights:
        raise SdpruneError(f"{where}: cannot resume: {describe_non_finite(bad_weights)} (the run diverged "
                           "before this checkpoint; start again with a lower --lr)")


def load_training_state(ckpt: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                        controller=None) -> None:
    """Load what a resume continues from (weights, optimizer, learned-survival controller) into a
    run built from the checkpoint's config (``check_resumable`` first); a state that does not fit
    this model, or holds non-finite values, is one SdpruneError."""
    where = ckpt.get("path", "checkpoint")
    model.load_state_dict(ckpt["state_dict"])
    state = ckpt.get("optimizer")
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError, AttributeError) as err:
        raise SdpruneError(f"{where}: the optimizer state does not fit this model ({_line(err)})") from None
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if not isinstance(value, Tensor) or value.dim() == 0:
                    continue
                if value.shape != p.shape:
                    raise SdpruneError(f"{where}: the optimizer's {key} has shape {list(value.shape)} for a "
                                       f"parameter of shape {list(p.shape)}")
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise SdpruneError(f"{where}: cannot resume: the optimizer's {key} holds NaN or infinite values")
    if controller is not None:
        saved = ckpt.get("controller") or {}
        if not isinstance(saved, dict):
            raise SdpruneError(f"{where}: the learned-survival state must be a dict, got {_kind(saved)}")
        for key, fresh in controller.state_dict().items():  # what this model's controller holds
            value = saved.get(key)
            if isinstance(fresh, Tensor) and isinstance(value, Tensor) and (
                    value.shape != fresh.shape or not bool(torch.isfinite(value).all())):
                raise SdpruneError(f"{where}: the learned-survival {key} has shape {list(value.shape)} (this model's: "
                                   f"{list(fresh.shape)}) or non-finite values")
        try:
            controller.load_state_dict(saved)
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError, AttributeError) as err:
            raise SdpruneError(f"{where}: the learned-survival state does not fit this model ({_line(err)})") from None


def _check_meta(meta: dict[str, Any], bad) -> None:
    """Types and ranges of the metadata fields (consistency with the tensors: ``check_checkpoint``)."""
    arch = meta.get("model")
    if not isinstance(arch, dict):
        bad(f"meta.model must be a dict, got {_kind(arch)}")
    if not isinstance(arch.get("name"), str):
        bad(f"meta.model.name must be a model name, got {_show(arch.get('name'))}")
    for key in ("num_classes", "in_channels"):
        if not _is_int(arch.get(key)) or arch[key] < 1:
            bad(f"meta.model.{key} must be a positive integer, got {_show(arch.get(key))}")
    if not isinstance(arch.get("kwargs", {}), dict):
        bad(f"meta.model.kwargs must be a dict, got {_kind(arch.get('kwargs'))}")
    data = meta.get("data")
    if not isinstance(data, dict):
        bad(f"meta.data must be a dict, got {_kind(data)}")
    check_data_meta(data, bad, "meta.data.")
    if len(data["classes"]) != arch["num_classes"]:
        bad(f"meta.data.classes names {len(data['classes'])} classes, meta.model.num_classes is {arch['num_classes']}")
    if data["input_shape"][0] != arch["in_channels"]:
        bad(f"meta.data.input_shape has {data['input_shape'][0]} channels, meta.model.in_channels is "
            f"{arch['in_channels']}")
    for key in ("blocks", "removed", "kept"):
        names = meta.get(key, [] if key != "blocks" else None)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            bad(f"meta.{key} must be a list of block names, got {_kind(names)}")
    survival = meta.get("survival")
    if survival is not None and not (isinstance(survival, list)
                                     and all(_is_number(p) and 0.0 <= p <= 1.0 for p in survival)):
        bad(f"meta.survival must be a list of probabilities in [0, 1], got {_show(survival)}")
    if not isinstance(meta.get("kind", ""), str):
        bad(f"meta.kind must be a string, got {_show(meta.get('kind'))}")
    if meta.get("kind") == "train":
        for key in ("epoch", "step"):
            if not _is_int(meta.get(key)) or meta[key] < 0:
                bad(f"meta.{key} must be a whole number >= 0, got {_show(meta.get(key))}")
    config = meta.get("config")
    if config is None and meta.get("kind") == "train":
        bad("meta.config is missing (a training checkpoint records its config)")
    if config is not None:
        if not isinstance(config, dict):
            bad(f"meta.config must be a dict, got {_kind(config)}")
        try:
            TrainConfig.from_dict(config)
        except SdpruneError as err:
            bad(f"meta.config: {err}")


def check_data_meta(data: dict[str, Any], bad, prefix: str = "") -> None:
    """What a network's data description must be (a checkpoint's ``meta.data``, an ONNX file's
    metadata): a dataset name, distinct class names, an input shape (C, H, W), one finite mean and one
    positive finite std per channel. ``bad(message)`` raises; ``prefix`` names the fields."""
    if data.get("dataset") not in DATASETS:
        bad(f"{prefix}dataset must be one of {', '.join(DATASETS)}, got {_show(data.get('dataset'))}")
    classes = data.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        bad(f"{prefix}classes must be a list of class names (strings), got {_show(classes)}")
    twice = next((c for i, c in enumerate(classes) if c in classes[:i]), None)
    if twice is not None:  # two outputs of one name: a prediction could not say which class it means
        bad(f"{prefix}classes names {_show(twice)} twice; every class needs a name of its own")
    shape = data.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(s) and 1 <= s <= MAX_SIDE for s in shape)):
        bad(f"{prefix}input_shape must be [channels, height, width] (1 to {MAX_SIDE}), got {_show(shape)}")
    for key in ("mean", "std"):
        values = data.get(key)
        if not (isinstance(values, list) and all(_is_number(v) and math.isfinite(v) for v in values)):
            bad(f"{prefix}{key} must be a list of finite numbers, got {_show(values)}")
        if len(values) != shape[0]:
            bad(f"{prefix}{key} has {len(values)} values for {shape[0]} channels")
    if not all(v > 0 for v in data["std"]):
        bad(f"{prefix}std must be positive, got {_show(data['std'])}")
    if "mode" in data and data["mode"] not in ("memory", "stream"):
        bad(f"{prefix}mode must be memory or stream, got {_show(data['mode'])}")
    if "resize" in data and not (_is_int(data["resize"]) and shape[-1] <= data["resize"] <= MAX_SIDE):
        bad(f"{prefix}resize must be a whole number of pixels from {shape[-1]} to {MAX_SIDE}, "
            f"got {_show(data['resize'])}")


def _check_tensors(state: dict[str, Tensor], expected: dict[str, Tensor], meta: dict[str, Any], bad) -> None:
    """The weights are exactly the architecture's (after removal): names, shapes, floating or not."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    arch = meta["model"]
    described = f"{arch['name']} with {arch['num_classes']} classes, {arch['in_channels']} input channels"
    if missing or extra:
        what = f"lacks {missing[0]} of" if missing else f"has {extra[0]}, unknown to"
        bad(f"the weights do not match the metadata: the state_dict {what} {described}"
            f"{' minus the removed blocks' if meta.get('removed') else ''}")
    for key, want in expected.items():
        got = state[key]
        if got.shape != want.shape:
            bad(f"the weights do not match the metadata: {key} has shape {list(got.shape)}, "
                f"{described} needs {list(want.shape)}")
        if got.is_floating_point() != want.is_floating_point():
            bad(f"the weights do not match the metadata: {key} is {got.dtype}, expected {want.dtype}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _kind(v: Any) -> str:
    return "nothing" if v is None else type(v).__name__


def _show(v: Any, limit: int = 60) -> str:
    """A value as it reads in a one-line message, cut short."""
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


def _first_difference(a: list, b: list) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"position {i}: {_show(x)} where {_show(y)} is"
    return f"{len(a)} vs {len(b)} names"


def _line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]

"""Accuracy and loss of a network on an image set (eval mode, deterministic)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdprune.data.bundle import data_for_checkpoint
from sdprune.data.images import ImageSet, iterate_batches, normalization, normalize
from sdprune.depth.structure import block_names
from sdprune.errors import SdpruneError
from sdprune.nets.measure import size_of
from sdprune.report import Reporter
from sdprune.train.checkpoint import build_model, load_checkpoint, total_blocks
from sdprune.train.config import EVAL_BATCH_SIZE
from sdprune.train.distributed import Distributed, sum_across


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu."""

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SdpruneError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SdpruneError("--device cuda asked for, but no CUDA device is available")
    return device


def predict(model: nn.Module, data: ImageSet, mean: list[float], std: list[float],
            device: torch.device | str = "cpu", batch_size: int = EVAL_BATCH_SIZE) -> Tensor:
    """Logits (float32, CPU) for every image of ``data``, in order (the model's mode is kept)."""
    return predict_labelled(model, data, mean, std, device, batch_size)[0]


@torch.no_grad()
def predict_labelled(model: nn.Module, data: ImageSet, mean: list[float], std: list[float],
                     device: torch.device | str = "cpu", batch_size: int = EVAL_BATCH_SIZE,
                     shard: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """``predict`` for every image of ``data`` (or of this rank's ``shard`` of it), with the
    labels of the images scored (a streamed set may skip unreadable ones)."""
    was_training = model.training
    model.eval()
    mean_std = normalization(mean, std, device)
    out, labels = [], []
    try:
        for images, y in iterate_batches(data, batch_size, shard=shard):
            x = normalize(images.to(device, non_blocking=True), *mean_std)
            out.append(model(x).float().cpu())
            labels.append(y)
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return torch.cat(out), torch.cat(labels)


def score_logits(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """Mean cross-entropy and top-1 accuracy (in %) of logits against labels."""
    if labels.numel() == 0:
        return {"loss": float("nan"), "acc": float("nan")}
    return {"loss": float(F.cross_entropy(logits, labels)),
            "acc": 100.0 * float((logits.argmax(1) == labels).float().mean())}


def evaluate(model: nn.Module, data: ImageSet, mean: list[float], std: list[float],
             device: torch.device | str = "cpu", batch_size: int = EVAL_BATCH_SIZE,
             world: Distributed | None = None) -> dict[str, float]:
    """Loss, top-1 accuracy (%) and the number ``n`` of images scored (a folder's unreadable
    files are left out) of ``model`` on ``data``; under torchrun (``world``) each rank scores
    its share and the sums are pooled."""
    logits, labels = predict_labelled(model, data, mean, std, device, batch_size, world.shard if world else None)
    if world is None or not world.enabled:
        return {**score_logits(logits, labels), "n": len(labels)}
    local = torch.tensor([float(F.cross_entropy(logits, labels, reduction="sum")) if len(labels) else 0.0,
                          float((logits.argmax(1) == labels).sum()) if len(labels) else 0.0, float(len(labels))],
                         dtype=torch.float64, device=device)
    loss_sum, correct, n = sum_across(local, world).tolist()
    if not n:
        return {**score_logits(logits, labels), "n": 0}
    return {"loss": loss_sum / n, "acc": 100.0 * correct / n, "n": int(n)}


def assess(model: nn.Module, data, device: torch.device | str = "cpu", batch_size: int = EVAL_BATCH_SIZE) -> dict:
    """Loss and accuracy on the validation slice and the test split of a DataBundle."""
    return {split: evaluate(model, getattr(data, split), data.mean, data.std, device, batch_size)
            for split in ("val", "test")}


def evaluate_checkpoint(path, dataset: str | None = None, data_dir: str | None = None,
                        device: str = "auto", batch_size: int = EVAL_BATCH_SIZE,
                        reporter=None) -> dict:
    """Accuracy and loss of a full or pruned checkpoint on a dataset's test split and
    validation slice, with parameters and FLOPs."""

    ckpt = load_checkpoint(path, reporter)
    meta = ckpt["meta"]
    dev = resolve_device(device)
    model = build_model(ckpt).to(dev)
    data = data_for_checkpoint(meta, dataset, data_dir)  # which checks its classes against the model's
    (reporter or Reporter(quiet=True)).info(f"evaluating {ckpt['path']} on {data.name}")
    result = assess(model, data, dev, batch_size)
    blocks = block_names(model)
    return {"model": ckpt["path"], "kind": meta.get("kind"), "architecture": meta["model"]["name"],
            "dataset": data.name, "test": result["test"], "val": result["val"],
            "images": {"test": result["test"]["n"], "val": result["val"]["n"]},
            "blocks": {"kept": len(blocks), "total": total_blocks(meta)},
            **size_of(model, data.input_shape)}

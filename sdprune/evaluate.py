"""Accuracy and loss of a network on an ImageSet (eval mode, deterministic)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdprune.data import ImageSet, iterate_batches, normalize


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    from sdprune.errors import SdpruneError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SdpruneError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SdpruneError("--device cuda asked for, but no CUDA device is available")
    return device


@torch.no_grad()
def predict(model: nn.Module, data: ImageSet, mean: list[float], std: list[float],
            device: torch.device | str = "cpu", batch_size: int = 512) -> Tensor:
    """Logits (float32, CPU) for every image of ``data``, in order."""
    was_training = model.training
    model.eval()
    out = []
    for images, _ in iterate_batches(data, batch_size):
        x = normalize(images.to(device, non_blocking=True), mean, std)
        out.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def score_logits(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """Mean cross-entropy and top-1 accuracy (in %) of logits against labels."""
    if labels.numel() == 0:
        return {"loss": float("nan"), "acc": float("nan")}
    return {"loss": float(F.cross_entropy(logits, labels)),
            "acc": 100.0 * float((logits.argmax(1) == labels).float().mean())}


def evaluate(model: nn.Module, data: ImageSet, mean: list[float], std: list[float],
             device: torch.device | str = "cpu", batch_size: int = 512) -> dict[str, float]:
    """Loss and top-1 accuracy (%) of ``model`` on ``data``."""
    return score_logits(predict(model, data, mean, std, device, batch_size), data.labels)

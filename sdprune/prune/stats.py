"""Importance statistics of each gated block (scores only: deciding is ``sdprune.depth.select``).

Per block, measured on the held-out validation slice (never the test split):
  * ``survival``: the block's survival probability p_l (learned, or the schedule's);
  * ``delta_loss`` / ``delta_acc``: drop-one ablation, the change in loss and accuracy
    (points) when this block alone is replaced by act(shortcut(x));
  * ``influence``: 1 - cos(act(shortcut(x)), block output), per image, averaged: how far
    the block moves the representation from what its removal would leave (ShortGPT's
    block influence, generalised to blocks whose shortcut is a projection);
  * ``residual_ratio``: ||p_l * branch(x)|| / ||shortcut(x)||, per image, averaged: the
    size of what the block adds relative to the path it is added to;
  * ``params`` / ``flops``: what removing the block saves (its branch).

Drop-one ablation reuses the shared prefix: one recording pass keeps every block's output
for a batch; ablating block l then installs (``sdprune.depth.gates.gating``) the cached
outputs of blocks < l as replays (no compute) and a 0 gate on block l, so only block l's
shortcut and the blocks after it run. The cost is about 1 + L/2
evaluation passes instead of L, and memory is bounded by one batch of activations.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdprune import __version__
from sdprune.choices import STATS_IMAGES
from sdprune.data.bundle import DataBundle, data_for_checkpoint
from sdprune.data.images import iterate_batches, normalize
from sdprune.depth.block import GatedBlock
from sdprune.depth.gates import gating
from sdprune.depth.structure import block_layout, gated_blocks
from sdprune.errors import SdpruneError
from sdprune.files import check_output
from sdprune.report import Reporter
from sdprune.train.checkpoint import build_model, load_checkpoint, write_json
from sdprune.files import remove_stale_temps
from sdprune.train.evaluate import evaluate, resolve_device
from sdprune.train.runs import CHECKPOINT

STATS_FILE = "stats.json"
STATS_ROOM = 1 << 20  # bytes a statistics file may take (a few kB per block)
SUBSET_SEED = 0  # --stats-images picks the same images every time


def check_stats_args(batch_size: int, images: int | None) -> None:
    """Reject a batch size or image count no statistics pass can use (before loading anything)."""
    if batch_size < 1:
        raise SdpruneError(f"the batch size must be at least 1, got {batch_size}")
    if images is not None and images < 1:
        raise SdpruneError(f"the statistics need at least 1 image, got {images}")


@torch.no_grad()
def collect_stats(model: nn.Module, data: DataBundle, device: torch.device | str = "cpu",
                  batch_size: int = 128, max_images: int | None = None, ablation: bool = True,
                  reporter: Reporter | None = None) -> list[dict[str, Any]]:
    """One row per gated block of ``model``, measured on ``data.val`` (see module doc).

    ``max_images`` caps the validation images used; ``ablation=False`` skips the
    drop-one passes (``delta_loss``/``delta_acc`` are then None) for criteria that do
    not need them.
    """
    reporter = reporter or Reporter(quiet=True)
    rows = block_layout(model, tuple(data.input_shape))
    for row in rows:
        row.pop("model_flops")
        row.pop("block_flops")
    blocks = [b for _, b in gated_blocks(model)]
    val = data.val.sample(max_images, SUBSET_SEED)
    L, n = len(blocks), 0
    influence, ratio = torch.zeros(L, dtype=torch.float64), torch.zeros(L, dtype=torch.float64)
    drop_loss, drop_correct = torch.zeros(L, dtype=torch.float64), torch.zeros(L, dtype=torch.float64)
    full_loss, full_correct = 0.0, 0.0
    was_training = model.training
    model.eval()
    batches = -(-len(val) // batch_size)
    try:
        with reporter.progress("block statistics", batches * (1 + (L if ablation else 0))) as bar:
            for images, labels in iterate_batches(val, batch_size):
                x = normalize(images.to(device, non_blocking=True), data.mean, data.std)
                y = labels.to(device, non_blocking=True)
                with _recording(blocks) as rec:
                    logits = model(x).float()
                full_loss += float(F.cross_entropy(logits, y, reduction="sum"))
                full_correct += float((logits.argmax(1) == y).sum())
                influence += torch.tensor(rec.influence, dtype=torch.float64)
                ratio += torch.tensor(rec.ratio, dtype=torch.float64)
                n += len(y)
                bar.update(1)
                for i in range(L if ablation else 0):
                    # blocks before i replay their cached outputs (no compute); block i is removed
                    with gating(blocks, [None] * i + [0.0] + [None] * (L - i - 1),
                                rec.outputs[:i] + [None] * (L - i)):
                        out = model(x).float()
                    drop_loss[i] += float(F.cross_entropy(out, y, reduction="sum"))
                    drop_correct[i] += float((out.argmax(1) == y).sum())
                    bar.update(1)
                del rec
    finally:
        model.train(was_training)
    for i, row in enumerate(rows):
        row["influence"] = float(influence[i] / max(n, 1))
        row["residual_ratio"] = float(ratio[i] / max(n, 1))
        row["delta_loss"] = float((drop_loss[i] - full_loss) / n) if ablation and n else None
        row["delta_acc"] = float(100.0 * (drop_correct[i] - full_correct) / n) if ablation and n else None
    return rows


class _Record:
    def __init__(self, size: int) -> None:
        self.outputs: list[Tensor | None] = [None] * size
        self.influence = [0.0] * size
        self.ratio = [0.0] * size


@contextmanager
def _recording(blocks: list[GatedBlock]) -> Iterator[_Record]:
    """Hooks that keep each block's output and reduce its influence and residual ratio.

    The reductions happen inside the hooks, while the tensors are exactly what the block
    saw and produced (later in-place activations cannot alter them).
    """
    rec = _Record(len(blocks))
    parts: dict[int, dict[str, Tensor]] = {}
    hooks = []
    for i, block in enumerate(blocks):
        parts[i] = {}
        hooks.append(block.shortcut.register_forward_hook(_keep(parts[i], "shortcut")))
        hooks.append(block.branch.register_forward_hook(_keep(parts[i], "branch")))
        hooks.append(block.register_forward_hook(_reduce(rec, parts[i], i)))
    try:
        yield rec
    finally:
        for h in hooks:
            h.remove()


def _keep(store: dict, key: str):
    def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
        store[key] = output
    return hook


def _reduce(rec: _Record, part: dict, i: int):
    def hook(block: GatedBlock, args: tuple, output: Tensor) -> None:
        skip, branch = part.pop("shortcut"), part.pop("branch")
        kept = block.act(skip).flatten(1).float()
        out = output.flatten(1).float()
        rec.influence[i] = float((1.0 - F.cosine_similarity(kept, out, dim=1, eps=1e-12)).sum())
        added = (branch * block.survival).flatten(1).float().norm(dim=1)
        rec.ratio[i] = float((added / skip.flatten(1).float().norm(dim=1).clamp_min(1e-12)).sum())
        rec.outputs[i] = output
    return hook


def score_checkpoint(path: str | Path, device: str = "auto", batch_size: int = 128,
                     max_images: int | None = STATS_IMAGES, ablation: bool = True, out: str | Path | None = None,
                     reporter: Reporter | None = None) -> dict[str, Any]:
    """Statistics of a checkpoint's blocks, written to ``stats.json`` next to it (``stats_path``).

    Also times one plain evaluation pass over the same images, so the document says
    what the statistics cost relative to evaluating the network.
    """

    reporter = reporter or Reporter(quiet=True)
    check_stats_args(batch_size, max_images)
    ckpt = load_checkpoint(path, reporter)
    target = Path(out) if out else stats_path(ckpt["path"])
    check_output(target, folder=False, need_bytes=STATS_ROOM, what="statistics file")
    if target.parent.is_dir():
        remove_stale_temps(target.parent)
    dev = resolve_device(device)
    model = build_model(ckpt).to(dev)
    data = data_for_checkpoint(ckpt["meta"])
    val = data.val.sample(max_images, SUBSET_SEED)
    warm_up = val.subset(torch.arange(min(len(val), batch_size)))
    evaluate(model, warm_up, data.mean, data.std, dev, batch_size)
    t0 = time.perf_counter()
    full = evaluate(model, val, data.mean, data.std, dev, batch_size)
    eval_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = collect_stats(model, data, dev, batch_size, max_images, ablation, reporter)
    stats_s = time.perf_counter() - t0
    layout = block_layout(model, tuple(data.input_shape))
    doc = {
        "sdprune_version": __version__, "checkpoint": ckpt["path"], "model": ckpt["meta"]["model"]["name"],
        "dataset": ckpt["meta"]["data"]["dataset"], "split": "val", "images": len(val),
        "batch_size": batch_size, "device": str(dev), "ablation": ablation,
        "full": full, "params": sum(p.numel() for p in model.parameters()),
        "flops": layout[0]["model_flops"] if layout else None,
        "cost": {"eval_s": eval_s, "stats_s": stats_s, "ratio": stats_s / max(eval_s, 1e-9),
                 "flop_ratio": ablation_flop_ratio(layout) if ablation else 1.0},
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "blocks": rows,
    }
    write_json(target, doc)
    doc["written"] = str(target)
    return doc


def stats_path(checkpoint: str | Path) -> Path:
    """Where a checkpoint's statistics go by default: ``stats.json`` beside ``checkpoint.pt``,
    ``stats-<name>.json`` beside any other checkpoint file (two never share one)."""
    checkpoint = Path(checkpoint)
    name = STATS_FILE if checkpoint.name == CHECKPOINT else f"stats-{checkpoint.stem}.json"
    return checkpoint.parent / name


def ablation_flop_ratio(layout: list[dict[str, Any]]) -> float:
    """FLOPs of statistics with a shared prefix, in units of one forward pass.

    One recording pass, then per block l everything except blocks < l and block l's
    branch (what replaying and removal skip).
    """
    if not layout:
        return 1.0
    total = layout[0]["model_flops"]
    cost, before = float(total), 0
    for row in layout:
        cost += total - before - row["flops"]
        before += row["block_flops"]
    return cost / max(total, 1)

"""Training across processes under torchrun: the process group, gradient agreement, and
the checks that every rank trains the same network.

``torchrun --nproc-per-node N -m sdprune train ...`` starts N copies of `sdprune train`;
``distributed_session`` joins them into one process group (NCCL on CUDA, one GPU per
local rank; gloo on the CPU). ``--batch-size`` stays the global batch: each rank takes a
contiguous 1/N of every batch (``iterate_batches(shard=...)``), so a run on N processes
sees the batches, crops and gates of the same run on one.

Skipped branches leave their parameters without gradients, on every rank alike (every
rank draws the same gates from (seed, step)). Three ways to average gradients that cope
with it are kept, because which is faster is a measured fact (``tools/bench_ddp.py``;
they tie on the CPU, the GPUs are still to measure): ``ddp``, DistributedDataParallel
with ``find_unused_parameters`` when a block can be skipped (bucketed all-reduce
overlapped with backward, plus a graph search for unused parameters each step);
``ddp-skip-unused``, the same without reducing the skipped blocks' (zero) gradients; and
``allreduce``, one flat all-reduce of the gradients that exist after backward (no
search, no overlap). Either way a parameter no rank used keeps no
gradient, so SGD leaves it alone exactly as on one process.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sdprune.choices import GRAD_SYNCS
from sdprune.errors import SdpruneError
from sdprune.train.sync_norm import convert_cross_rank_bn


def resolve_grad_sync(grad_sync: str, device: torch.device) -> str:
    """``auto``: ``allreduce`` on the CPU, where the three tie (BENCHMARKS.md, "Distributed
    gradient averaging") and DDP's unused-parameter search warns falsely whenever a step
    skips no block; ``ddp`` on GPUs, whose overlap of the all-reduce with backward only
    NCCL can use, until a GPU measurement says otherwise."""
    if grad_sync not in GRAD_SYNCS:
        raise SdpruneError(f"--grad-sync must be one of {', '.join(GRAD_SYNCS)}, got {grad_sync!r}")
    if grad_sync != "auto":
        return grad_sync
    return "ddp" if device.type == "cuda" else "allreduce"


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: rank ``rank`` of ``world_size`` (1: no group)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes on this machine

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """The rank that writes checkpoints, metrics and progress."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int] | None:
        return (self.rank, self.world_size) if self.enabled else None


def launched_world() -> Distributed:
    """The rank and world size torchrun gave this process (world 1 when not under torchrun)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError:
        raise SdpruneError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers (set by torchrun)") from None
    if world < 1 or not 0 <= rank < world:
        raise SdpruneError(f"RANK {rank} is not in a world of {world} processes")
    return Distributed(rank, world, local, max(1, local_world))


@contextmanager
def machine_first(world: Distributed) -> Iterator[None]:
    """Run the scope on each machine's local rank 0 first, then on its other ranks.

    For work that writes a shared place, such as a dataset download: one process per
    machine fetches it while the others wait, then they read what it wrote.
    """
    if world.enabled and world.local_rank != 0:
        dist.barrier()
    yield
    if world.enabled and world.local_rank == 0:
        dist.barrier()


@contextmanager
def distributed_session(device: str) -> Iterator[tuple[Distributed, str]]:
    """Join torchrun's process group for the scope; yields (this rank, its device name).

    Without torchrun (WORLD_SIZE unset or 1) nothing is joined and ``device`` is kept.
    Under torchrun each rank takes the GPU of its local rank, or the CPU (gloo) when the
    device is cpu or there is no GPU.
    """
    world = launched_world()
    if not world.enabled or dist.is_initialized():
        yield (world if dist.is_initialized() else Distributed()), device
        return
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(world.local_rank)
        device = f"cuda:{world.local_rank}"
    else:
        device = "cpu"
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield world, device
    finally:
        dist.destroy_process_group()


def wrap_model(model: nn.Module, world: Distributed, device: torch.device, sync_bn: bool,
               may_skip: bool, grad_sync: str) -> nn.Module:
    """The module the training step runs forward through (``model`` itself on one process).

    ``sync_bn`` makes BatchNorm pool its training statistics over every rank, in place (the
    checkpoint's keys do not change): PyTorch's SyncBatchNorm on GPUs, ``CrossRankBatchNorm``
    where PyTorch refuses it (the CPU); ``may_skip`` says whether some step can skip a branch
    (batch mode: a row-mode mask computes every branch); ``grad_sync`` is resolved (not auto).
    """
    if not world.enabled:
        return model
    if grad_sync not in GRAD_SYNCS[1:]:
        raise ValueError(f"grad_sync must be one of {GRAD_SYNCS[1:]}, got {grad_sync!r}")
    if sync_bn:
        if device.type == "cuda":
            _convert_sync_bn(model)
        else:
            convert_cross_rank_bn(model)
    if grad_sync == "allreduce":
        broadcast_parameters(model)
        return model
    ids = [device.index] if device.type == "cuda" else None
    # Buffers are not synced per forward (rank 0's BatchNorm statistics are broadcast once
    # per epoch, before evaluation). Skipping the reduction of unused parameters is safe
    # because every rank skips the same blocks at every step.
    return nn.parallel.DistributedDataParallel(
        model, device_ids=ids, find_unused_parameters=may_skip, forward_sync_buffers=False,
        skip_all_reduce_unused_params=may_skip and grad_sync == "ddp-skip-unused")


def _convert_sync_bn(model: nn.Module) -> None:
    for name, child in list(model.named_children()):
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(child)
        if converted is not child:
            setattr(model, name, converted)


def broadcast_parameters(model: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (what DDP does when it wraps)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, src=0)


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics, survivals) on every rank."""
    for tensor in model.buffers():
        dist.broadcast(tensor.data, src=0)


def average_gradients(model: nn.Module, world: Distributed) -> None:
    """The ``allreduce`` strategy: average the gradients that exist, in one flat transfer.

    Every rank ran the same gates, so every rank holds gradients for the same parameters.
    """
    if not world.enabled:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world.world_size)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def sum_across(values: Tensor, world: Distributed) -> Tensor:
    """``values`` summed over the ranks (returned as is on one process)."""
    if world.enabled:
        values = values.clone()
        dist.all_reduce(values)
    return values


def gather_rows(values: Tensor, world: Distributed) -> Tensor:
    """Every rank's 1-D ``values`` concatenated in rank order (ranks may hold different counts)."""
    if not world.enabled:
        return values
    count = torch.tensor([values.numel()], device=values.device)
    counts = [torch.zeros_like(count) for _ in range(world.world_size)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    if max(sizes) == 0:  # every rank knows every size: all return here together
        return values
    padded = torch.zeros(max(sizes), dtype=values.dtype, device=values.device)
    padded[:values.numel()] = values
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def check_agreement(world: Distributed, checks: dict[str, float], device: torch.device) -> None:
    """Fail loudly if any rank's ``checks`` (survivals, gates drawn, weights) differ from rank 0's.

    Every rank must train the same network; a divergence (a rank that drew other gates, or
    learned other survivals) would otherwise go on silently.
    """
    if not world.enabled:
        return
    mine = torch.tensor(list(checks.values()), dtype=torch.float64, device=device)
    everyone = [torch.zeros_like(mine) for _ in range(world.world_size)]
    dist.all_gather(everyone, mine)
    for rank, theirs in enumerate(everyone[1:], start=1):
        for name, a, b in zip(checks, everyone[0].tolist(), theirs.tolist()):
            if abs(a - b) > 1e-6 * max(1.0, abs(a)):
                raise SdpruneError(f"rank {rank} diverged from rank 0: its {name} checksum is {b!r}, "
                                   f"rank 0's {a!r}; the ranks no longer train one network")


def broadcast_text(text: str | None, world: Distributed, device: torch.device) -> str | None:
    """Rank 0's ``text`` on every rank (the run folder, chosen once), sent as bytes: no pickle."""
    if not world.enabled:
        return text
    data = (text or "").encode()
    length = torch.tensor([len(data)], device=device)
    dist.broadcast(length, src=0)
    buffer = torch.zeros(int(length), dtype=torch.uint8, device=device)
    if world.main:
        buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buffer, src=0)
    return bytes(buffer.cpu().tolist()).decode() or None

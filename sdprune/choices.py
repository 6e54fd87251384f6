"""What a user chooses among: every option's allowed values and its defaults, in one place.

The command line builds its options from these (choices and the defaults its help states),
so this module imports neither torch nor anything that does: `sdprune --help` and a
mistyped flag answer in a fraction of a second instead of the seconds torch and torchvision
take to load. The modules that act on a choice import it from here, so a value is defined
once. (Defaults that belong to one object stay with it and are read by the command line
from torch-free modules: ``sdprune.train.config.TrainConfig``, ``sdprune.deploy``'s.)
"""

from __future__ import annotations

from sdprune.errors import SdpruneError

# -- data (sdprune.data) ----------------------------------------------------------------
DATASETS = ("digits", "synthetic", "mnist", "fashion-mnist", "cifar10", "cifar100", "svhn", "imagefolder")
DATA_MODES = ("auto", "memory", "stream")
# --data-mode auto streams a folder whose decoded images would take more than this (bytes)
# of memory; below it, decoding once into memory is faster for every epoch after the first.
MEMORY_BUDGET = 2 * 2**30
FOLDER_IMAGE_SIZE = 64  # pixels: an image folder's default --image-size
BAD_IMAGES = ("fail", "skip")

# -- stochastic depth (sdprune.depth) ---------------------------------------------------
SCHEDULES = ("linear", "uniform", "none", "learned")
# Not a schedule to train with: what an adopted run records when its network came with the
# survivals its source trained it with (torchvision's drop rates: ConvNeXt, Swin ...).
PRIOR = "prior"
DROP_MODES = ("batch", "row")
CRITERIA = ("survival", "ablation", "influence", "norm", "depth", "every-other", "random")
# How a prune-aware retrofit (`train --init --survival learned --target-keep`) ranks the trained
# network's blocks at step 0: one criterion that reads the network (as `prune --criterion` does,
# on the same images), or best: the one whose BatchNorm-healed pruned network is best on validation.
RETROFIT_CRITERIA = ("best", "ablation", "influence", "norm")
RANK_IMAGES = 2000  # validation images best's statistics use: enough to order blocks
# ... and by when (a fraction of training) the blocks it excludes are gone, annealed from step 0.
RETROFIT_ANNEAL_END = 0.5
MAX_SEED = 2**63 - 1  # what every generator seeded from a --seed accepts

# -- training (sdprune.train) -----------------------------------------------------------
GRAD_SYNCS = ("auto", "ddp", "ddp-skip-unused", "allreduce")
# sgd: Nesterov momentum, the paper's (and ResNets'); adamw: what ConvNeXt's, ViT's and
# Swin's published recipes train with (under SGD a ConvNeXt's layer-scaled blocks barely move).
OPTIMIZERS = ("sgd", "adamw")

# -- pruning (sdprune.prune) ------------------------------------------------------------
HEAL_MODES = ("none", "bn", "finetune")  # `sdprune prune --heal` and `sdprune sweep --heal`
# Validation images the statistics score on by default (all of them when there are fewer).
# Drop-one costs about L/2 + 1 evaluation passes, so a 5,000-image slice made `prune` of a
# ResNet-56 spend most of an hour scoring on a CPU; on that network (the public CIFAR-10
# weights, BENCHMARKS.md "Statistics cost") 1,000 seeded images chose the same blocks as all
# 5,000 at keep 0.5 and at keep 1/3, and 500 differed by one block.
STATS_IMAGES = 1000
SWEEP_KEEPS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25)
SWEEP_CRITERIA = ("survival", "ablation", "influence", "depth", "every-other", "random")
SWEEP_REPEATS = 30  # timed rounds per model at batch 1


def check_seed(seed: int, flag: str = "--seed") -> None:
    """Reject a seed no generator takes (torch's are 64-bit), before any work."""
    if isinstance(seed, bool) or not (isinstance(seed, int) and 0 <= seed <= MAX_SEED):
        raise SdpruneError(f"{flag} must be a whole number from 0 to 2**63 - 1, got {seed}")
